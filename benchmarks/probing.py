"""Sparse probing of industry labels: SAE latents against the raw residual they are built from.

From a finished `make demo`: for every company's latest text, its pooled SAE latents at the feature layer
(`company_features`), the mean of its usable residual vectors at the same layer (massive tokens left out by
the release's rule, as company_features does), and its MiniLM embedding (`text_embeddings`) are probed
for the SIC division and the GICS sector (`industry_codes`) with k-sparse logistic probes
(`peerlens.similarity.probing`, 5-fold stratified CV):

    accuracy@k     mean held-out accuracy of a probe on the k best features (ranked inside each fold)
    accuracy_std   spread over the folds
    majority_rate  the floor: always answering the commonest label

The raw residual at the same layer is the anchor: it holds everything the SAE latents were made from.

    .venv/bin/python benchmarks/probing.py [--home .peerlens] [--ks 1 4 16 64 4096]

Progress goes to stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd

from assets.clusters import EMBEDDING_COLUMNS
from assets.features import dense_features, feature_layer, features_of_texts
from peerlens.layout import read_table
from peerlens.similarity.layer_representations import residual_representations, selected_layer, text_tokens
from peerlens.similarity.point_in_time import codes_as_of
from peerlens.similarity.probing import sparse_probe_accuracy
from peerlens.sources.texts import latest_texts
from sae_core.activation_store import ActivationStore
from sae_core.sae_set import SaeSet

LABELS = {"sic_division": "sic_division", "gics_sector": "gics_sector"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("PEERLENS_HOME", ".peerlens"))
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16, 64, 100_000])
    args = parser.parse_args()
    home, tables = args.home, Path(args.home) / "tables"
    texts = latest_texts(read_table(home, "company_descriptions"))
    # The codes of today, to match each company's latest text.
    codes = codes_as_of(read_table(home, "industry_codes"), pd.Timestamp.today() + pd.Timedelta(days=1))
    release = SaeSet.from_dict(json.loads((tables / "group_saes.json").read_text()))
    store = ActivationStore(Path(args.home) / json.loads((tables / "activation_corpus.json").read_text())["folder"])
    layer = feature_layer(-1, store.n_layers)
    text_ids = texts.text_id.tolist()
    tokens = text_tokens(store.index, release.massive_rule.usable_mask(store.token_norms()), text_ids)

    representations = {
        "sae_latents": features_of_texts(dense_features(read_table(home, "company_features")), text_ids),
        "raw_residual": residual_representations(selected_layer(store, layer, tokens), tokens, layer, ["mean"])[0].features[1],
        "minilm": read_table(home, "text_embeddings").set_index("text_id").loc[text_ids, EMBEDDING_COLUMNS].to_numpy(),
    }
    report = {"layer": layer, "companies": len(text_ids), "anchor": "raw_residual (the same layer, the same tokens)"}
    for label, column in LABELS.items():
        labels = codes[column].reindex(texts.ticker).to_numpy()
        report[label] = {}
        for name, features in representations.items():
            table = sparse_probe_accuracy(features, labels, args.ks)
            report[label][name] = {f"accuracy@{row.k}": round(row.accuracy, 4) for row in table.itertuples()}
            report[label][name]["accuracy_std_at_largest_k"] = round(float(table.accuracy_std.iloc[-1]), 4)
            report[label]["majority_rate"] = round(float(table.majority_rate.iloc[0]), 4)
            print(f"{label} {name}: {report[label][name]}", file=sys.stderr, flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
