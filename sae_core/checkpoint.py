"""Resumable training state: what `train_sae` saves every `checkpoint_every` steps, and its checks.

A checkpoint is one file, `<checkpoint_dir>/train_state.safetensors`, so it is replaced atomically
(written to a staged file, synced, then renamed: `sae_core.staging.publish_file`): a crash leaves the
previous checkpoint or the new one, never a mix. It holds

    tensors (safetensors)   sae/<name>                   every parameter and buffer of the SAE
                            optimizer/<name>/<key>       the optimiser's state for each parameter:
                                                         step, exp_avg, exp_avg_sq (adam); step, z,
                                                         x and v (schedule_free_adam) or no v
                                                         (schedule_free_signum)
                            progress/tokens_since_fired  (d_sae,) int64, the dead-latent clock
                            progress/batch_order         int64, the current shuffle of the data rows
                            progress/generator_state     uint8, the torch.Generator's state
    JSON (in the safetensors header, key "peerlens_checkpoint")
                            format_version, step, batch_position, history, seconds, identity

`identity` says which run the state belongs to: the SaeConfig, the TrainConfig fields that change
what is computed (all but device, logging and checkpointing), the data's shape, dtype and a SHA-256
of 256 evenly spaced rows, and a SHA-256 of the transfer-init SAE's tensors. Restoring into a run of
another identity, or from a file that is truncated, unreadable or holds tensors of the wrong names
or shapes, raises ValueError naming the file and leaves the file as it was. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as serialize_tensors
from torch import Tensor

from sae_core.config import SaeConfig, TrainConfig
from sae_core.full_disk import naming_a_full_disk
from sae_core.optim import ScheduleFree
from sae_core.sae import SparseAutoencoder
from sae_core.staging import publish_file, staged_sibling

CHECKPOINT_FILENAME = "train_state.safetensors"
FORMAT_VERSION = 2
_METADATA_KEY = "peerlens_checkpoint"
_FINGERPRINT_ROWS = 256
_ADAM_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")


def _optimizer_state_keys(optimizer: torch.optim.Optimizer) -> tuple[str, ...]:
    if isinstance(optimizer, ScheduleFree):
        return ScheduleFree.state_keys(optimizer.param_groups[0]["base"])
    if isinstance(optimizer, torch.optim.Adam):
        return _ADAM_STATE_KEYS
    raise TypeError(f"cannot checkpoint a {type(optimizer).__name__}: only Adam and ScheduleFree")


@dataclass
class TrainingProgress:
    """The training loop's state besides the SAE and the optimiser: enough to continue bit for bit."""

    step: int
    """Optimiser steps completed."""
    tokens_since_fired: Tensor
    """(d_sae,) int64: training tokens since each latent last fired."""
    batch_order: Tensor
    """(m,) int64: the current shuffle of data rows; batches are read from it at `batch_position`."""
    batch_position: int
    """Index into `batch_order` of the next batch's first row."""
    generator: torch.Generator
    """The CPU generator that draws the next shuffle."""
    history: list[dict] = field(default_factory=list)
    """The log records so far (see train.TrainResult.history)."""
    seconds: float = 0.0
    """Wall-clock seconds spent in the training loop so far, over every resumed part."""


def checkpoint_path(checkpoint_dir: str | Path) -> Path:
    """Where a run with this `TrainConfig.checkpoint_dir` keeps its state."""
    return Path(checkpoint_dir) / CHECKPOINT_FILENAME


def _sha256_of_tensors(tensors: list[Tensor]) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        # Raw bytes, whatever the dtype (numpy has no bfloat16).
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_identity(
    data: Any, sae_cfg: SaeConfig, train_cfg: TrainConfig, init: SparseAutoencoder | None
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by this run (JSON-ready; see the module docstring); `data` is
    a tensor or `sae_core.activation_stream.StoreRows`."""
    n_rows = data.shape[0]
    rows = torch.linspace(0, n_rows - 1, min(n_rows, _FINGERPRINT_ROWS)).round().long()
    identity = {
        "sae_config": sae_cfg.to_dict(),
        "train_config": train_cfg.identity(),
        "data": {
            "shape": list(data.shape),
            "dtype": str(data.dtype),
            "sampled_rows_sha256": _sha256_of_tensors([data[rows.to(data.device)]]),
        },
        "init_sha256": None if init is None else _sha256_of_tensors(list(init.state_dict().values())),
    }
    if not isinstance(data, Tensor):  # streamed rows (activation_stream.StoreRows): their store, layers, buffer
        identity["data"]["stream"] = data.identity()
    return json.loads(json.dumps(identity))  # tuples → lists, as they come back from the file


def save_checkpoint(
    path: Path,
    sae: SparseAutoencoder,
    optimizer: torch.optim.Optimizer,
    progress: TrainingProgress,
    identity: dict[str, Any],
) -> None:
    """Write the state atomically and durably to `path` (a staged file, published by `publish_file`)."""
    tensors = {f"sae/{name}": value.detach().cpu().contiguous() for name, value in sae.state_dict().items()}
    for name, parameter in sae.named_parameters():
        state = optimizer.state[parameter]
        for key in _optimizer_state_keys(optimizer):
            tensors[f"optimizer/{name}/{key}"] = state[key].detach().cpu().contiguous()
    tensors["progress/tokens_since_fired"] = progress.tokens_since_fired.cpu().contiguous()
    tensors["progress/batch_order"] = progress.batch_order.cpu().contiguous()
    tensors["progress/generator_state"] = progress.generator.get_state()
    document = {
        "format_version": FORMAT_VERSION,
        "step": progress.step,
        "batch_position": progress.batch_position,
        "history": progress.history,
        "seconds": progress.seconds,
        "identity": identity,
    }
    payload = serialize_tensors(tensors, metadata={"format": "pt", _METADATA_KEY: json.dumps(document)})

    path.parent.mkdir(parents=True, exist_ok=True)
    staged = staged_sibling(path)
    try:
        with naming_a_full_disk(f"the checkpoint {path}"):
            staged.write_bytes(payload)
            publish_file(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    # Temp files of runs killed mid-write are garbage once a complete checkpoint is in place.
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        stale.unlink(missing_ok=True)


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The JSON document and the tensors of the checkpoint at `path`; ValueError if unreadable."""
    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ValueError(
            f"checkpoint {path} is not a readable safetensors file ({error}); "
            "delete it to start afresh, or point TrainConfig.checkpoint_dir elsewhere"
        ) from error
    if _METADATA_KEY not in metadata:
        raise ValueError(f"checkpoint {path} has no {_METADATA_KEY!r} header: not a sae_core training checkpoint")
    try:
        document = json.loads(metadata[_METADATA_KEY])
    except json.JSONDecodeError as error:
        raise ValueError(f"checkpoint {path}: its {_METADATA_KEY!r} header is not valid JSON: {error}") from error
    if not isinstance(document, dict) or document.get("format_version") != FORMAT_VERSION:
        version = document.get("format_version") if isinstance(document, dict) else None
        raise ValueError(f"checkpoint {path} has format_version {version!r}, this code reads {FORMAT_VERSION}")
    return document, tensors


def _check_identity(path: Path, saved: Any, current: dict[str, Any]) -> None:
    if saved == current:
        return
    if not isinstance(saved, dict):
        raise ValueError(f"checkpoint {path} has no valid run identity")
    differing = []
    for section in current:
        old, new = saved.get(section), current[section]
        if isinstance(old, dict) and isinstance(new, dict):
            differing += [f"{section}.{key}: {old.get(key)!r} → {new.get(key)!r}"
                          for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
        elif old != new:
            differing.append(f"{section}: {old!r} → {new!r}")
    raise ValueError(
        f"checkpoint {path} belongs to another run ({'; '.join(differing)}); "
        "delete it to start afresh, or point TrainConfig.checkpoint_dir elsewhere"
    )


def _take(path: Path, tensors: dict[str, Tensor], name: str, like: Tensor) -> Tensor:
    """tensors[name], checked to have `like`'s shape and dtype."""
    if name not in tensors:
        raise ValueError(f"checkpoint {path} has no tensor {name!r}")
    tensor = tensors[name]
    if tensor.shape != like.shape or tensor.dtype != like.dtype:
        raise ValueError(
            f"checkpoint {path}: {name} is {tensor.dtype} {tuple(tensor.shape)}, "
            f"expected {like.dtype} {tuple(like.shape)}"
        )
    return tensor


def load_checkpoint(
    path: Path,
    sae: SparseAutoencoder,
    optimizer: torch.optim.Optimizer,
    identity: dict[str, Any],
    n_steps: int,
) -> TrainingProgress:
    """Restore the state at `path` into `sae` and `optimizer` (in place) and return the progress.

    Everything is read and checked before anything is written into `sae` or `optimizer`; the file
    is only read. ValueError (naming the file) for an unreadable file, another run's identity,
    missing or misshapen tensors, or a step outside 1..n_steps.
    """
    document, tensors = _read(path)
    _check_identity(path, document.get("identity"), identity)
    step, position, history, seconds = (document.get(key) for key in ("step", "batch_position", "history", "seconds"))
    if not isinstance(step, int) or not 1 <= step <= n_steps:
        raise ValueError(f"checkpoint {path}: step {step!r} is outside 1..{n_steps}")
    if not isinstance(history, list) or not isinstance(seconds, (int, float)):
        raise ValueError(f"checkpoint {path}: history or seconds is missing or malformed")

    sae_state = {name: _take(path, tensors, f"sae/{name}", value) for name, value in sae.state_dict().items()}
    optimizer_states = {}
    for index, (name, parameter) in enumerate(sae.named_parameters()):
        like = {"step": torch.tensor(0.0)}  # the step count is a scalar; all other state is shaped like the parameter
        optimizer_states[index] = {
            key: _take(path, tensors, f"optimizer/{name}/{key}", like.get(key, parameter.detach().cpu()))
            for key in _optimizer_state_keys(optimizer)
        }
    tokens_since_fired = _take(
        path, tensors, "progress/tokens_since_fired", torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    )
    batch_order = tensors.get("progress/batch_order")
    if batch_order is None or batch_order.ndim != 1 or batch_order.dtype != torch.long:
        raise ValueError(f"checkpoint {path}: progress/batch_order is missing or not a 1-D int64 tensor")
    n_rows = identity["data"]["shape"][0]
    if batch_order.numel() and not (0 <= int(batch_order.min()) and int(batch_order.max()) < n_rows):
        raise ValueError(f"checkpoint {path}: progress/batch_order holds rows outside 0..{n_rows - 1}")
    if not isinstance(position, int) or not 0 <= position <= batch_order.numel():
        raise ValueError(f"checkpoint {path}: batch_position {position!r} is outside its batch order")
    generator = torch.Generator()
    try:
        generator.set_state(_take(path, tensors, "progress/generator_state", generator.get_state()))
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path}: progress/generator_state is not a generator state: {error}") from error

    with torch.no_grad():
        for name, value in sae.state_dict().items():
            value.copy_(sae_state[name])
    optimizer.load_state_dict({"state": optimizer_states, "param_groups": optimizer.state_dict()["param_groups"]})
    device = sae.device
    return TrainingProgress(
        step=step,
        tokens_since_fired=tokens_since_fired.to(device),
        batch_order=batch_order,
        batch_position=position,
        generator=generator,
        history=history,
        seconds=float(seconds),
    )
