"""Comparing training regimes (Group-SAEs, per-layer SAEs, layer-wise transfer) layer by layer.

A regime is described the way the saes assets store one: a list of SAE entries, each with the layers
it serves, its held-out metrics per layer, the tokens it trained on and its wall time. From these:

    layer table     one row per (regime, layer): fvu, l0, dead_fraction (+ CE-loss score, KL when spliced)
    compute table   one row per regime: SAEs, tokens, seconds, FLOPs ≈ Σ training_flops(cfg, tokens), and
                    capture_flops = Σ_SAEs tokens · 2 · (parameters of decoder layers 0..the SAE's deepest layer):
                    the model's forward pass that makes each SAE's training activations, as the Group-SAE
                    paper counts it (every SAE's tokens run through the model up to its layer)
    summary         what the papers claim, measured:
        group_saving_flops     = 1 − FLOPs_group / FLOPs_per_layer        (also by tokens and seconds)
        group_saving_flops_with_capture = the same with capture_flops added on both sides
        group_fvu_gap          = mean_l (FVU_group(l) − FVU_per_layer(l))  (and its max over layers)
        transfer_score_ratio   = mean_l CE-score_transfer(l) / CE-score_per_layer(l)  (and its min)
        transfer_token_share   = tokens of one fine-tune / tokens of one from-scratch SAE
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from sae_core.sae_set import SaeSet
from sae_core.metrics import training_flops

LAYER_COLUMNS = ["regime", "layer", "sae", "fvu", "l0", "dead_fraction"]
COMPUTE_COLUMNS = ["regime", "saes", "tokens", "seconds", "flops", "capture_flops"]


def layer_table(regimes: Mapping[str, SaeSet]) -> pd.DataFrame:
    """One row per (regime, layer) an SAE of the regime serves: columns LAYER_COLUMNS.

    `sae` is the entry's position within its regime (a group SAE serves several layers).
    """
    rows = []
    for regime, saes in regimes.items():
        for number, layer, metrics in saes.layer_metrics():
            rows.append({"regime": regime, "layer": layer, "sae": number, **{k: getattr(metrics, k) for k in LAYER_COLUMNS[3:]}})
    return pd.DataFrame(rows, columns=LAYER_COLUMNS)


def capture_flops(tokens: int, deepest_layer: int, layer_parameters: list[int]) -> float:
    """FLOPs of running `tokens` tokens through decoder layers 0..deepest_layer: 2 per parameter per token."""
    return float(2 * tokens * sum(layer_parameters[: deepest_layer + 1]))


def compute_table(regimes: Mapping[str, SaeSet], layer_parameters: list[int] | None = None) -> pd.DataFrame:
    """One row per regime: the SAEs it trained, their tokens, wall seconds, estimated training FLOPs and, given
    each decoder layer's parameter count (`layer_parameters`, (L,)), the capture FLOPs (NaN without it)."""
    rows = []
    for regime, saes in regimes.items():
        cfg, entries = saes.sae_config, saes.saes
        tokens = sum(e.tokens_seen for e in entries)
        capture = float("nan")
        if layer_parameters is not None:
            capture = sum(capture_flops(e.tokens_seen, max(e.layers), layer_parameters) for e in entries)
        rows.append(
            {
                "regime": regime,
                "saes": len(entries),
                "tokens": tokens,
                "seconds": float(sum(e.train_seconds for e in entries)),
                "flops": training_flops(cfg, tokens),
                "capture_flops": capture,
            }
        )
    return pd.DataFrame(rows, columns=COMPUTE_COLUMNS)


def check_comparable(regimes: Mapping[str, SaeSet], fields: tuple[str, ...] = ("sae_config", "holdout_share")) -> None:
    """Raise ValueError unless every regime has the same SAE shape and held-out split (else FVUs differ in meaning)."""
    names = list(regimes)
    for field in fields:
        values = {name: _comparable(getattr(regimes[name], field)) for name in names}
        if len({repr(v) for v in values.values()}) > 1:
            raise ValueError(f"the regimes were trained with different {field}: {values}; retrain them alike to compare")


def _comparable(value):
    # Configurations compare by their fields, device left out: where a regime was trained does not change what it is.
    if hasattr(value, "to_dict"):
        return {k: v for k, v in value.to_dict().items() if k != "device"}
    return value


def comparison_summary(
    layers: pd.DataFrame,
    compute: pd.DataFrame,
    baseline: str = "per_layer",
    grouped: str = "group",
    transfer: str = "transfer",
) -> dict[str, float]:
    """The module docstring's summary figures from a layer table (with `ce_loss_score` when spliced)
    and a compute table; regimes missing from the tables are left out of the summary."""
    cost = compute.set_index("regime")
    by_regime = {name: rows.set_index("layer") for name, rows in layers.groupby("regime")}
    summary: dict[str, float] = {}
    if baseline not in by_regime:
        raise ValueError(f"the layer table has no {baseline!r} regime to compare against")
    base = by_regime[baseline]
    if grouped in by_regime:
        for unit in ("flops", "tokens", "seconds"):
            summary[f"group_saving_{unit}"] = float(1 - cost.loc[grouped, unit] / cost.loc[baseline, unit])
        if not cost.capture_flops.isna().any():
            with_capture = cost.flops + cost.capture_flops
            summary["group_saving_flops_with_capture"] = float(1 - with_capture[grouped] / with_capture[baseline])
        gap = (by_regime[grouped].fvu - base.fvu).dropna()
        summary["group_fvu_gap_mean"] = float(gap.mean())
        summary["group_fvu_gap_max"] = float(gap.max())
    if transfer in by_regime:
        fine_tune = cost.loc[transfer, "tokens"] / cost.loc[transfer, "saes"]
        summary["transfer_token_share"] = float(fine_tune / (cost.loc[baseline, "tokens"] / cost.loc[baseline, "saes"]))
        summary["transfer_fvu_gap_mean"] = float((by_regime[transfer].fvu - base.fvu).dropna().mean())
        if "ce_loss_score" in layers:
            ratio = (by_regime[transfer].ce_loss_score / base.ce_loss_score).dropna()
            summary["transfer_score_ratio_mean"] = float(ratio.mean())
            summary["transfer_score_ratio_min"] = float(ratio.min())
    return summary
