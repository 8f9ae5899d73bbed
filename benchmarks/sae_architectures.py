"""SAE architectures at equal L0 and tokens: which reconstructs best, and which becomes the default.

On the feature layer (two thirds deep, as `company_features`) of a materialized activation store, one SAE
per architecture is trained with `group_saes`' settings (width 4 × d_model, k = 32 active latents: TopK's
k, BatchTopK's and Matryoshka's mean k, JumpReLU's target L0; ReLU's L1 coefficient is the one measured
to give L0 ≈ 30) on the training companies' usable tokens, and scored on the held-out companies' usable
tokens (massive tokens excluded, `sae_core.massive_activations`; split as `sae_core.token_split`):

    fvu               held-out fraction of variance unexplained
    l0                held-out mean active latents per token (the sparsity actually reached)
    fvu_first_eighth  FVU when only the first d_sae/8 latents may fire: Matryoshka trains that prefix to
                      reconstruct on its own; for the others it is an arbitrary eighth
    dead_fraction     share of latents that never fire on the held-out tokens
    seconds           training wall time on this machine
    fvu_over_topk     fvu / TopK's fvu with the same seed, measured in this run (the anchor)

With several seeds each figure is the mean and its spread (max − min) over them.

    .venv/bin/python benchmarks/sae_architectures.py [--store .peerlens/artifacts/activation_corpus/store]
        [--seeds 0 1] [--total-tokens 300000]

Progress goes to stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see sae_throughput.py

import argparse  # noqa: E402 (after the environment is set)
import json  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

from assets.features import feature_layer  # noqa: E402
from assets.saes import GroupSaesConfig  # noqa: E402
from sae_core.activation_store import ActivationStore  # noqa: E402
from sae_core.config import SUPPORTED_ARCHITECTURES  # noqa: E402
from sae_core.massive_activations import find_massive_tokens  # noqa: E402
from sae_core.metrics import evaluate_sae, fvu  # noqa: E402
from sae_core.token_split import token_split  # noqa: E402
from sae_core.train import train_sae  # noqa: E402

ANCHOR = "topk"


def prefix_fvu(sae, x: torch.Tensor, width: int, batch_size: int = 8192) -> float:
    """FVU of x (n, d_in) reconstructed from the first `width` latents of each token's code alone."""
    reconstructions = []
    with torch.inference_mode():
        for batch in x.split(batch_size):
            z = sae.dense_latents(batch.float())
            z[:, width:] = 0
            reconstructions.append((z @ sae.W_dec + sae.b_dec) / sae.input_scale)
    return float(fvu(x.float(), torch.cat(reconstructions)))


def train_and_score(architecture: str, seed: int, train_rows: torch.Tensor, held_out: torch.Tensor, args) -> dict:
    config = GroupSaesConfig(architecture=architecture, seed=seed, total_tokens=args.total_tokens)
    sae_cfg = config.sae_config(train_rows.shape[1])
    result = train_sae(train_rows, sae_cfg, config.train_config("cpu"))
    metrics = evaluate_sae(result.sae, held_out)
    return {
        "fvu": metrics.fvu,
        "l0": metrics.l0,
        "fvu_first_eighth": prefix_fvu(result.sae, held_out, sae_cfg.d_sae // 8),
        "dead_fraction": metrics.dead_fraction,
        "seconds": result.seconds,
    }


def summarise(runs: list[dict]) -> dict:
    """Each figure's mean over seeds, and its spread (max − min) when there are several."""
    summary = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        summary[key] = round(sum(values) / len(values), 4)
        if len(values) > 1:
            summary[f"{key}_spread"] = round(max(values) - min(values), 4)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=".peerlens/artifacts/activation_corpus/store")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--total-tokens", type=int, default=GroupSaesConfig().total_tokens)
    parser.add_argument("--architectures", nargs="+", default=list(SUPPORTED_ARCHITECTURES))
    args = parser.parse_args()

    store = ActivationStore(args.store)
    layer = feature_layer(-1, store.n_layers)
    massive = find_massive_tokens(store.token_norms())
    split = token_split(store.index.document, GroupSaesConfig().holdout_share, massive)
    x = store.layer(layer)
    train_rows, held_out = x[split.train].float(), x[split.evaluate].float()
    print(f"layer {layer}: {len(train_rows)} training tokens, {len(held_out)} held out", file=sys.stderr)

    architectures = [ANCHOR] + [a for a in args.architectures if a != ANCHOR]
    runs: dict[str, list[dict]] = {architecture: [] for architecture in architectures}
    for seed in args.seeds:
        for architecture in architectures:
            scores = train_and_score(architecture, seed, train_rows, held_out, args)
            runs[architecture].append(scores)
            # The anchor runs first for every seed, so its last run is this seed's.
            scores["fvu_over_topk"] = scores["fvu"] / runs[ANCHOR][-1]["fvu"]
            print(f"seed {seed} {architecture}: {json.dumps({k: round(v, 4) for k, v in scores.items()})}", file=sys.stderr)
    defaults = GroupSaesConfig()
    print(json.dumps({
        "store": args.store,
        "layer": layer,
        "d_sae": defaults.expansion_factor * store.d_model,
        "k_or_target_l0": defaults.k,
        "total_tokens": args.total_tokens,
        "seeds": args.seeds,
        "anchor": f"{ANCHOR}, trained with the same seed, tokens and width in this run",
        "architectures": {architecture: summarise(scores) for architecture, scores in runs.items()},
    }))


if __name__ == "__main__":
    main()
