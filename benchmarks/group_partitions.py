"""Group-SAE compute saving against FVU gap, for several AMAD partitions of the layers.

`sae_comparison` measures one partition: the one `layer_groups` chose (Ĝ at its AMAD threshold). This
script retrains the group SAEs for other Ĝ, from `layer_groups.groups_by_g` of a finished `make demo`,
with the demo's group-SAE settings, and scores them against the demo's per-layer SAEs:

    saving       = 1 − (group SAEs) / (layers)       each SAE trains on the same number of tokens
    fvu_gap[l]   = FVU(group SAE of l, layer l) − FVU(per-layer SAE of l, layer l)
                   both on the held-out companies' tokens of layer l, trained and scored without the
                   demo's massive tokens (`sae_core.token_split`), as the demo's SAEs were

The per-layer FVUs (the anchor) are read from the demo's `sae_comparison` table rather than
retrained: 30 SAEs would take ~10 min. As in `layer_groups`, the final layer always gets an SAE of
its own. The issue's bar is saving ≥ 50% at mean gap ≤ +0.01.

    .venv/bin/python benchmarks/group_partitions.py [--home .peerlens] [--partitions chosen,8,12]

Progress goes to stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see sae_throughput.py

import argparse  # noqa: E402 (after the environment is set)
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from assets.saes import GroupSaesConfig  # noqa: E402
from sae_core.activation_store import ActivationStore  # noqa: E402
from sae_core.massive_activations import MassiveTokens  # noqa: E402
from sae_core.metrics import evaluate_sae  # noqa: E402
from sae_core.token_split import TokenSplit, token_split  # noqa: E402
from sae_core.train import sample_group_activations, train_sae  # noqa: E402

TARGETS = {"saving": 0.5, "fvu_gap_mean": 0.01}


def partition(layer_groups: dict, name: str) -> list[list[int]]:
    """The chosen groups, or the contiguous partition into Ĝ = int(name) groups plus the final layer."""
    if name == "chosen":
        return layer_groups["chosen_groups"]
    if name not in layer_groups["groups_by_g"]:
        raise ValueError(f"partition {name!r}: layer_groups has Ĝ in {sorted(layer_groups['groups_by_g'], key=int)}")
    groups = layer_groups["groups_by_g"][name]
    final = max(max(group) for group in layer_groups["chosen_groups"])
    return groups if any(final in group for group in groups) else [*groups, [final]]


def score_partition(groups: list[list[int]], store: ActivationStore, split: TokenSplit,
                    per_layer_fvu: pd.Series, config: GroupSaesConfig) -> dict:
    """Train one group SAE per group as `group_saes` does and compare each layer with its per-layer SAE."""
    gaps, seconds = {}, 0.0
    sae_cfg = config.sae_config(store.d_model)
    for number, layers in enumerate(groups):
        per_layer = [store.layer(layer, dtype=torch.float16) for layer in layers]
        generator = torch.Generator().manual_seed(config.seed + number)
        rows = sample_group_activations([x[split.train] for x in per_layer], generator).float()
        result = train_sae(rows, sae_cfg, config.train_config("cpu"))
        seconds += result.seconds
        for layer, x in zip(layers, per_layer):
            gaps[layer] = evaluate_sae(result.sae, x[split.evaluate].float()).fvu - float(per_layer_fvu[layer])
    gap = pd.Series(gaps)
    n_layers = len(per_layer_fvu)
    return {
        "saes": len(groups),
        "groups": [[group[0], group[-1]] for group in groups],
        "saving": round(1 - len(groups) / n_layers, 4),
        "fvu_gap_mean": round(float(gap.mean()), 4),
        "fvu_gap_max": round(float(gap.max()), 4),
        "worst_layer": int(gap.idxmax()),
        "train_seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("PEERLENS_HOME", ".peerlens"),
                        help="PEERLENS_HOME of a finished `make demo`")
    parser.add_argument("--partitions", default="chosen,8,12", help="'chosen' and/or Ĝ values, comma-separated")
    args = parser.parse_args()
    tables = Path(args.home) / "tables"
    needed = [tables / name for name in ("layer_groups.json", "activation_corpus.json", "sae_comparison.parquet",
                                         "massive_activations.json")]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found: run `make demo` (or pass --home) first")
    torch.set_num_threads(2)
    layer_groups = json.loads(needed[0].read_text())
    store = ActivationStore(Path(args.home) / json.loads(needed[1].read_text())["folder"])
    comparison = pd.read_parquet(needed[2])
    per_layer_fvu = comparison[comparison.regime == "per_layer"].set_index("layer").fvu.sort_index()
    config = GroupSaesConfig()  # the demo's group-SAE settings
    massive = MassiveTokens.from_dict(json.loads(needed[3].read_text()))
    split = token_split(store.index.document, config.holdout_share, massive)

    results = {}
    for name in args.partitions.split(","):
        results[name] = score_partition(partition(layer_groups, name), store, split, per_layer_fvu, config)
        print(f"partition {name}: {results[name]}", file=sys.stderr, flush=True)
    meeting = [name for name, r in results.items()
               if r["saving"] >= TARGETS["saving"] and r["fvu_gap_mean"] <= TARGETS["fvu_gap_mean"]]
    print(json.dumps({"anchor": "per-layer SAEs of the demo's sae_comparison", "partitions": results,
                      "targets": TARGETS, "partitions_meeting_targets": meeting}))


if __name__ == "__main__":
    main()
