"""A trained set of SAEs, as one training asset hands it to the next: typed, with a JSON form.

    SaeSet
      saes            TrainedSae per SAE: the layers it serves, its folder (SAELens layout, relative to
                      the storage root), held-out LayerMetrics per layer, seconds and tokens it took
      sae_config      the SaeConfig every SAE of the set shares
      train_config    the TrainConfig they were trained with
      holdout_share   the share of texts held out for the metrics (`sae_core.token_split`)
      notes           what a regime adds (transfer: direction, token_fraction; a release: its id)
      massive_rule    the massive-token rule and reference medians its training tokens were chosen by,
                      which judges the tokens it encodes later (`sae_core.massive_activations.MassiveRule`)

The JSON form (`to_dict`) is what the IO manager stores and release.json holds: layers as lists, metrics
keyed by the layer's decimal string (JSON keys are strings).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from sae_core.config import SaeConfig, TrainConfig
from sae_core.massive_activations import MassiveRule


@dataclass(frozen=True)
class LayerMetrics:
    """Held-out quality of an SAE on one layer (`sae_core.token_split.layer_metrics`)."""

    fvu: float
    l0: float
    dead_fraction: float
    n_tokens: int
    fvu_with_massive: float
    """FVU on the held-out tokens plus every massive token (equal to fvu when none is left out)."""


@dataclass(frozen=True)
class TrainedSae:
    layers: tuple[int, ...]
    path: str
    """The SAE's folder, relative to the storage root."""
    metrics: dict[int, LayerMetrics]
    """Held-out metrics of each layer in `layers`."""
    train_seconds: float
    tokens_seen: int
    initialised_from_layer: int | None = None
    """Transfer SAEs: the layer whose SAE this one was fine-tuned from."""
    layer_paths: dict[int, str] | None = None
    """Group SAEs trained with per-layer input scaling: one save per layer served, each with that layer's
    scale folded in (SAELens layout, relative to the storage root); None: `path` serves every layer."""

    def path_for(self, layer: int) -> str:
        """The saved SAE to run on `layer`'s activations."""
        if layer not in self.layers:
            raise ValueError(f"the SAE at {self.path} serves layers {list(self.layers)}, not {layer}")
        return self.layer_paths[layer] if self.layer_paths else self.path

    def to_dict(self) -> dict:
        value = {
            "layers": list(self.layers),
            "path": self.path,
            "metrics": {str(layer): asdict(m) for layer, m in self.metrics.items()},
            "train_seconds": self.train_seconds,
            "tokens_seen": self.tokens_seen,
        }
        if self.initialised_from_layer is not None:
            value["initialised_from_layer"] = self.initialised_from_layer
        if self.layer_paths:
            value["layer_paths"] = {str(layer): path for layer, path in self.layer_paths.items()}
        return value

    @classmethod
    def from_dict(cls, data: dict) -> TrainedSae:
        return cls(
            layers=tuple(int(layer) for layer in data["layers"]),
            path=data["path"],
            metrics={int(layer): LayerMetrics(**m) for layer, m in data["metrics"].items()},
            train_seconds=float(data["train_seconds"]),
            tokens_seen=int(data["tokens_seen"]),
            initialised_from_layer=data.get("initialised_from_layer"),
            layer_paths={int(layer): path for layer, path in data["layer_paths"].items()} if data.get("layer_paths") else None,
        )


@dataclass(frozen=True)
class SaeSet:
    saes: tuple[TrainedSae, ...]
    sae_config: SaeConfig
    train_config: TrainConfig
    holdout_share: float
    notes: dict = field(default_factory=dict)
    """Scalars a regime adds (JSON values): e.g. direction and token_fraction of transfer SAEs, the
    release and its version for group SAEs, massive tokens left out of training."""
    massive_rule: MassiveRule | None = None
    """How the training corpus's massive tokens were found; None for a set that does not record it."""

    def __post_init__(self):
        if not self.saes:
            raise ValueError("an SaeSet holds at least one SAE")

    def for_layer(self, layer: int) -> TrainedSae:
        """The SAE that serves `layer`."""
        for sae in self.saes:
            if layer in sae.layers:
                return sae
        raise ValueError(f"no SAE of the set serves layer {layer} (layers served: {sorted(self.layers_served)})")

    @property
    def layers_served(self) -> list[int]:
        return [layer for sae in self.saes for layer in sae.layers]

    @property
    def groups(self) -> list[list[int]]:
        return [list(sae.layers) for sae in self.saes]

    def layer_metrics(self) -> list[tuple[int, int, LayerMetrics]]:
        """(position of the SAE in the set, layer, metrics) for every layer served, in set order."""
        return [(number, layer, metrics) for number, sae in enumerate(self.saes) for layer, metrics in sae.metrics.items()]

    def to_dict(self) -> dict:
        return {
            "saes": [sae.to_dict() for sae in self.saes],
            "sae_config": self.sae_config.to_dict(),
            "train_config": self.train_config.to_dict(),
            "holdout_share": self.holdout_share,
            **({"massive_rule": self.massive_rule.to_dict()} if self.massive_rule else {}),
            **self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SaeSet:
        known = {f.name for f in fields(cls)}
        missing = sorted({"saes", "sae_config", "train_config", "holdout_share"} - set(data))
        if missing:
            raise ValueError(f"not an SAE set: {missing} missing (keys: {sorted(data)})")
        return cls(
            saes=tuple(TrainedSae.from_dict(entry) for entry in data["saes"]),
            sae_config=SaeConfig(**data["sae_config"]),
            train_config=TrainConfig(**data["train_config"]),
            holdout_share=float(data["holdout_share"]),
            notes={k: v for k, v in data.items() if k not in known},
            massive_rule=MassiveRule.from_dict(data["massive_rule"]) if data.get("massive_rule") else None,
        )
