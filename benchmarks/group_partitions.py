"""Group-SAE compute saving against FVU gap, for several AMAD partitions of the layers: the frontier.

`sae_comparison` measures one partition: the one `layer_groups` chose (Ĝ at its AMAD threshold). This
script retrains the group SAEs for other Ĝ, from `layer_groups.groups_by_g` of a finished `make demo`,
with the demo's group-SAE settings, and scores them against the demo's per-layer SAEs:

    saving               = 1 − (group SAEs) / (layers)     each SAE trains on the same number of tokens
    saving_with_capture  = the same in FLOPs with each SAE's activation capture counted (the paper's way:
                           every SAE's tokens run through the model up to its deepest layer,
                           `sae_core.comparison.capture_flops`, plus its training FLOPs)
    fvu_gap[l]           = FVU(group SAE of l, layer l) − FVU(per-layer SAE of l, layer l)
                           both on the held-out companies' tokens of layer l, trained and scored without
                           the demo's massive tokens (`sae_core.token_split`), as the demo's SAEs were

The Group-SAE authors' two options, each on or off:
    --mean-centred       partitions from D̄ of mean-centred activations (`sae_core.distances`), not the demo's
    --per-layer-scaling  each layer of a group scaled to unit mean squared norm before mixing, and each layer
                         encoded at its own scale (`GroupSaesConfig.per_layer_scaling`)
`--fvu-gap-bound` picks Ĝ by quality among the partitions measured (`sae_core.groups.smallest_g_within_fvu_gap`).

The per-layer FVUs (the anchor) are read from the demo's `sae_comparison` table rather than
retrained: 30 SAEs would take ~10 min. As in `layer_groups`, the final layer always gets an SAE of
its own. The issue's bar is saving ≥ 50% (with capture) at mean gap ≤ +0.02. The CE-loss-score gap
needs the spliced evaluation of `sae_comparison` and is not measured here.

    .venv/bin/python benchmarks/group_partitions.py [--home .peerlens] [--partitions chosen,8,12]
        [--mean-centred] [--per-layer-scaling] [--fvu-gap-bound 0.02]

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

from assets.layers import LayerDistancesConfig  # noqa: E402
from assets.saes import GroupSaesConfig  # noqa: E402
from sae_core.activation_store import ActivationStore  # noqa: E402
from sae_core.capture import load_model  # noqa: E402
from sae_core.comparison import capture_flops  # noqa: E402
from sae_core.distances import store_distances  # noqa: E402
from sae_core.groups import choose_layer_groups, smallest_g_within_fvu_gap  # noqa: E402
from sae_core.massive_activations import MassiveTokens  # noqa: E402
from sae_core.metrics import evaluate_sae, training_flops  # noqa: E402
from sae_core.token_split import TokenSplit, token_split  # noqa: E402
from sae_core.train import train_sae  # noqa: E402
from sae_core.training_data import sample_group_activations, unit_scales  # noqa: E402

TARGETS = {"saving_with_capture": 0.5, "fvu_gap_mean": 0.02}


def partition(layer_groups: dict, name: str) -> list[list[int]]:
    """The chosen groups, or the contiguous partition into Ĝ = int(name) groups plus the final layer."""
    if name == "chosen":
        return layer_groups["chosen_groups"]
    if name not in layer_groups["groups_by_g"]:
        raise ValueError(f"partition {name!r}: layer_groups has Ĝ in {sorted(layer_groups['groups_by_g'], key=int)}")
    groups = layer_groups["groups_by_g"][name]
    final = max(max(group) for group in layer_groups["chosen_groups"])
    return groups if any(final in group for group in groups) else [*groups, [final]]


def mean_centred_groups(store: ActivationStore, massive: MassiveTokens) -> dict:
    """layer_groups' `groups_by_g` and chosen groups, from D̄ of mean-centred activations (AMAD threshold 0.2)."""
    distances, _ = store_distances(store, massive.usable_mask(store.n_tokens), LayerDistancesConfig().max_tokens, True)
    grouping = choose_layer_groups(distances.numpy())
    return {"groups_by_g": {str(g): groups for g, groups in grouping.groups_by_g.items()},
            "chosen_groups": grouping.chosen_groups, "chosen_g": grouping.chosen_g}


def score_partition(groups: list[list[int]], store: ActivationStore, split: TokenSplit, per_layer_fvu: pd.Series,
                    config: GroupSaesConfig, layer_parameters: list[int]) -> dict:
    """Train one group SAE per group as `group_saes` does and compare each layer with its per-layer SAE."""
    gaps, seconds, group_flops = {}, 0.0, 0.0
    sae_cfg = config.sae_config(store.d_model)
    for number, layers in enumerate(groups):
        per_layer = [store.layer(layer, dtype=torch.float16) for layer in layers]
        generator = torch.Generator().manual_seed(config.seed + number)
        training = [x[split.train] for x in per_layer]
        scales = unit_scales(training) if config.per_layer_scaling else [1.0] * len(layers)
        rows = sample_group_activations(training, generator, scales if config.per_layer_scaling else None).float()
        result = train_sae(rows, sae_cfg, config.train_config("cpu"))
        seconds += result.seconds
        group_flops += training_flops(sae_cfg, result.tokens_seen) + capture_flops(result.tokens_seen, max(layers), layer_parameters)
        trained_scale = float(result.sae.input_scale)
        for layer, x, scale in zip(layers, per_layer, scales):
            result.sae.input_scale.fill_(trained_scale * scale)
            gaps[layer] = evaluate_sae(result.sae, x[split.evaluate].float()).fvu - float(per_layer_fvu[layer])
    gap = pd.Series(gaps)
    n_layers = len(per_layer_fvu)
    per_sae_tokens = result.tokens_seen
    per_layer_flops = sum(training_flops(sae_cfg, per_sae_tokens) + capture_flops(per_sae_tokens, layer, layer_parameters)
                          for layer in range(n_layers))
    return {
        "saes": len(groups),
        "groups": [[group[0], group[-1]] for group in groups],
        "saving": round(1 - len(groups) / n_layers, 4),
        "saving_with_capture": round(1 - group_flops / per_layer_flops, 4),
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
    parser.add_argument("--mean-centred", action="store_true", help="partitions from mean-centred D̄")
    parser.add_argument("--per-layer-scaling", action="store_true", help="each layer of a group at its own scale")
    parser.add_argument("--fvu-gap-bound", type=float, default=TARGETS["fvu_gap_mean"])
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
    config = GroupSaesConfig(per_layer_scaling=args.per_layer_scaling)  # else the demo's group-SAE settings
    massive = MassiveTokens.from_dict(json.loads(needed[3].read_text()))
    split = token_split(store.index.document, config.holdout_share, massive)
    if args.mean_centred:
        layer_groups = mean_centred_groups(store, massive)
    layer_parameters = [sum(p.numel() for p in layer.parameters()) for layer in load_model(store.manifest["model"]).layers]

    results = {}
    for name in args.partitions.split(","):
        results[name] = score_partition(partition(layer_groups, name), store, split, per_layer_fvu, config, layer_parameters)
        print(f"partition {name}: {results[name]}", file=sys.stderr, flush=True)
    meeting = [name for name, r in results.items()
               if r["saving_with_capture"] >= TARGETS["saving_with_capture"] and r["fvu_gap_mean"] <= TARGETS["fvu_gap_mean"]]
    try:
        by_quality = smallest_g_within_fvu_gap({r["saes"] - 1: r["fvu_gap_mean"] for r in results.values()}, args.fvu_gap_bound)
    except ValueError as miss:
        by_quality = str(miss)
    print(json.dumps({"anchor": "per-layer SAEs of the demo's sae_comparison",
                      "options": {"mean_centred": args.mean_centred, "per_layer_scaling": args.per_layer_scaling},
                      "chosen_g_by_amad": layer_groups["chosen_g"], "chosen_g_within_fvu_gap_bound": by_quality,
                      "partitions": results, "targets": TARGETS, "partitions_meeting_targets": meeting}))


if __name__ == "__main__":
    main()
