"""Massive activations: how they are found, and which treatment gives the best company features.

For the feature layer (two thirds deep, as `company_features`), one TopK SAE with `group_saes`' settings
is trained on the training companies' tokens under each treatment of the massive tokens
(`sae_core.massive_activations`), and the companies are pooled and compared as the graph does:

    keep      massive tokens are used as they are (PeerLens before the fix)
    clip      x ← x · min(1, b_l / ‖x‖) with b_l = norm_multiple · median_l ‖x‖: norms cut to the bound
    exclude   massive tokens are left out of training, evaluation and pooling

Each treatment is scored on:
    fvu_held_out          FVU on the held-out companies' non-massive tokens (the same set for every
                          treatment; on the sample no held-out company has a massive token)
    fvu_usual_tokens      FVU on every company's non-massive tokens (training companies included)
    fvu_all_tokens        FVU on every company's tokens, massive ones included, as the treatment
                          presents them: what the massive tokens do to the figure
    max_token_share       per company, the largest share of its pooled vector one token makes up
                          (`sae_core.features.token_shares`): median over the companies with a massive token
    dominated_share       share of all companies with max_token_share > --dominated-above
    sector_agreement_5nn  mean share of a company's 5 nearest neighbours (cosine of the peer query's
                          profiles, `peerlens.similarity.company_latents.company_profiles`) in its GICS sector;
                          for all companies, those with a massive token, and those without
    affected_nn_affected  share of the companies with a massive token whose nearest neighbour has one too
The raw residual (mean-pooled, centred across companies, cosine) is scored the same way, as a
reference that has no SAE in it. The norm-ratio histogram says where `norm_multiple` can sit.

    .venv/bin/python benchmarks/massive_activations.py [--store .peerlens/artifacts/activation_corpus/store]

Progress goes to stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see sae_throughput.py

import argparse  # noqa: E402 (after the environment is set)
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from assets.features import feature_layer  # noqa: E402
from assets.saes import GroupSaesConfig  # noqa: E402
from peerlens.similarity.company_latents import company_profiles  # noqa: E402
from peerlens.sources.sample import default_sample_dir, load_company_descriptions, load_industry_codes  # noqa: E402
from sae_core.activation_store import ActivationStore  # noqa: E402
from sae_core.features import encode_tokens, pool_documents, token_shares  # noqa: E402
from sae_core.massive_activations import DEFAULT_NORM_MULTIPLE, find_massive_tokens, norm_ratios  # noqa: E402
from sae_core.metrics import evaluate_sae  # noqa: E402
from sae_core.token_split import holdout_mask  # noqa: E402
from sae_core.train import train_sae  # noqa: E402

TREATMENTS = ("keep", "clip", "exclude")
RATIO_BINS = [0, 2, 3, 5, 8, 10, 12, 15, 20, 30, 50, 100, 1000]


def treated(x: torch.Tensor, massive: torch.Tensor, bound: float, treatment: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows to use (n,) bool, x as the treatment presents it) for one layer's x (n, d)."""
    if treatment == "exclude":
        return ~massive, x
    if treatment == "clip":
        scale = (bound / x.norm(dim=1, keepdim=True)).clamp(max=1.0)
        return torch.ones_like(massive), x * scale
    return torch.ones_like(massive), x


def neighbour_scores(vectors: np.ndarray, sectors: np.ndarray, affected: np.ndarray, k: int = 5) -> dict:
    """5-NN sector agreement (all / affected / unaffected) and how often an affected company's NN is affected."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    agreement = (sectors[neighbours] == sectors[:, None]).mean(axis=1)
    return {
        "sector_agreement_5nn": round(float(agreement.mean()), 4),
        "sector_agreement_5nn_affected": round(float(agreement[affected].mean()), 4),
        "sector_agreement_5nn_unaffected": round(float(agreement[~affected].mean()), 4),
        "affected_nn_affected": round(float(affected[neighbours[affected, 0]].mean()), 4),
    }


def study(store: ActivationStore, sectors: pd.Series, norm_multiple: float, dominated_above: float) -> dict:
    layer = feature_layer(-1, store.n_layers)
    norms = store.token_norms()
    medians, ratios = norm_ratios(norms)
    massive = find_massive_tokens(norms, norm_multiple).massive_mask()
    index = store.index
    tickers = sorted(index.document.unique())
    document = index.document.map({t: i for i, t in enumerate(tickers)}).to_numpy()
    affected = np.zeros(len(tickers), dtype=bool)
    affected[np.unique(document[massive.numpy()])] = True
    sector = sectors.reindex(tickers).fillna("unknown").to_numpy()
    held_out = torch.from_numpy(holdout_mask(index.document, GroupSaesConfig().holdout_share))
    config = GroupSaesConfig()
    x = store.layer(layer)
    bound = norm_multiple * float(medians[layer])
    peak = ratios.max(dim=1).values.numpy()

    results = {
        "layer": layer,
        "norm_multiple": norm_multiple,
        "massive_tokens": int(massive.sum()),
        "companies": len(tickers),
        "affected_companies": int(affected.sum()),
        "massive_share_of_sum_sq_norm_at_layer": round(float(x[massive].pow(2).sum() / x.pow(2).sum()), 4),
        "peak_ratio_histogram": dict(zip(
            [f"{lo}-{hi}" for lo, hi in zip(RATIO_BINS[:-1], RATIO_BINS[1:])],
            np.histogram(peak, bins=RATIO_BINS)[0].tolist(),
        )),
        "treatments": {},
    }
    for treatment in TREATMENTS:
        usable, x_treated = treated(x, massive, bound, treatment)
        result = train_sae(x_treated[usable & ~held_out], config.sae_config(store.d_model), config.train_config("cpu"))
        sae = result.sae
        codes = encode_tokens(sae, x_treated[usable])
        pooled = pool_documents(codes, document[usable.numpy()], len(tickers), sae.cfg.d_sae).numpy()
        shares = pd.Series(token_shares(codes, document[usable.numpy()], len(tickers), sae.cfg.d_sae).numpy())
        max_share = shares.groupby(document[usable.numpy()]).max().reindex(range(len(tickers))).to_numpy()
        residual = pool_documents_dense(x_treated[usable], document[usable.numpy()], len(tickers))
        results["treatments"][treatment] = {
            "fvu_held_out": round(evaluate_sae(sae, x_treated[held_out & ~massive]).fvu, 4),
            "fvu_usual_tokens": round(evaluate_sae(sae, x_treated[~massive]).fvu, 4),
            "fvu_all_tokens": round(evaluate_sae(sae, x_treated).fvu, 4),
            "max_token_share_affected_median": round(float(np.median(max_share[affected])), 4),
            "max_token_share_unaffected_max": round(float(max_share[~affected].max()), 4),
            "dominated_share": round(float((max_share > dominated_above).mean()), 4),
            "sae": neighbour_scores(company_profiles(pooled), sector, affected),
            "raw_residual": neighbour_scores(residual - residual.mean(axis=0), sector, affected),
        }
        print(f"{treatment}: {results['treatments'][treatment]}", file=sys.stderr, flush=True)
    return results


def pool_documents_dense(x: torch.Tensor, document: np.ndarray, n_docs: int) -> np.ndarray:
    """Mean of each document's rows of x (n, d): (n_docs, d) float64."""
    sums = torch.zeros(n_docs, x.shape[1], dtype=torch.float64).index_add_(0, torch.as_tensor(document), x.double())
    counts = torch.bincount(torch.as_tensor(document), minlength=n_docs).clamp_min(1)
    return (sums / counts[:, None]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    home = os.environ.get("PEERLENS_HOME", ".peerlens")
    parser.add_argument("--store", default=os.path.join(home, "artifacts", "activation_corpus", "store"),
                        help="an activation store (default: the one `make demo` wrote)")
    parser.add_argument("--sample", default=str(default_sample_dir()), help="the offline sample, for GICS sectors")
    parser.add_argument("--norm-multiple", type=float, default=DEFAULT_NORM_MULTIPLE)
    parser.add_argument("--dominated-above", type=float, default=0.25, help="a token share above this dominates")
    args = parser.parse_args()
    torch.set_num_threads(2)
    store = ActivationStore(args.store)
    companies = load_company_descriptions(args.sample).frame[["ticker", "cik"]]
    codes = load_industry_codes(args.sample, companies).frame.set_index("ticker")
    print(json.dumps(study(store, codes.gics_sector, args.norm_multiple, args.dominated_above)))


if __name__ == "__main__":
    main()
