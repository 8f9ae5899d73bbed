"""One process of a `torchrun` SAE training job: what `SaeTrainer(launcher="torchrun")` launches.

    python -m torch.distributed.run --nproc_per_node N resources/sae_training_worker.py --job JOB

(by path, not `-m resources.…`: the `resources` package imports dagster, which the N training
processes have no use for; the launcher puts the project root on PYTHONPATH for `sae_core`).

Every process reads the same job folder, joins the process group torchrun describes (gloo on CPU,
NCCL on CUDA, one GPU per local rank) and calls `sae_core.train.train_sae`, which splits each batch
over the processes. The rows are memory-mapped, not loaded: each rank pages in only what it reads (its
share of every batch, its stride of the NaN check, the initialisation's subsample), and the ranks of a
node share one copy in the page cache. Rank 0 alone writes the outcome and, when Dagster launched the job
(dagster-pipes), streams the training log to it and reports a summary as a custom message.

The job folder is the whole contract between the resource and its workers, in open formats only:

    written by the resource               rows.safetensors   {"rows": (n_tokens, d_in) float}
                                          job.json           {"sae_config", "train_config",
                                                              "init_sae_config" (or null)}
                                          init.safetensors   the transfer-init SAE's state_dict, if any
    written by rank 0                     sae.safetensors    the trained SAE's state_dict, exactly as
                                                             train_sae returned it (input_scale and
                                                             unit-norm decoder rows, not folded)
                                          result.json        {"history", "tokens_seen", "seconds",
                                                              "resumed_from_step", "world_size"}

This module imports dagster_pipes (the small protocol package), never dagster.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from peerlens.layout import atomic_write
from sae_core.architectures import build_sae
from sae_core.config import SaeConfig, TrainConfig
from sae_core.distributed import (
    cuda_device_for_local_rank,
    destroy_process_group,
    init_process_group_from_environment,
)
from sae_core.sae import SparseAutoencoder
from sae_core.train import TrainResult, train_sae

ROWS_FILE = "rows.safetensors"
JOB_FILE = "job.json"
INIT_FILE = "init.safetensors"
SAE_FILE = "sae.safetensors"
RESULT_FILE = "result.json"


class TrainingJob(NamedTuple):
    """The arguments of one train_sae call, as read back from a job folder."""

    data: Tensor
    """Training rows, (n_tokens, d_in)."""
    sae_cfg: SaeConfig
    train_cfg: TrainConfig
    init: SparseAutoencoder | None
    """The SAE to start from (layer-wise transfer), or None for a fresh one."""


def _save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    tensors = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    atomic_write(path, lambda staged: save_file(tensors, staged))


def _write_json(document: dict[str, Any], path: Path) -> None:
    atomic_write(path, lambda staged: staged.write_text(json.dumps(document, indent=2)))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"training job file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"training job file {path} is not valid JSON: {error}") from error


def _sae_from_state(sae_cfg: SaeConfig, path: Path) -> SparseAutoencoder:
    """An SAE of `sae_cfg` holding the state_dict saved at `path` (CPU, float32)."""
    sae = build_sae(sae_cfg, generator=torch.Generator())
    sae.load_state_dict(load_file(path))
    return sae


def write_job(
    folder: Path, data: Tensor, sae_cfg: SaeConfig, train_cfg: TrainConfig, init: SparseAutoencoder | None = None
) -> None:
    """Write the arguments of a train_sae call to `folder` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    _save_tensors({"rows": data}, folder / ROWS_FILE)
    if init is not None:
        _save_tensors(init.state_dict(), folder / INIT_FILE)
    document = {
        "sae_config": sae_cfg.to_dict(),
        "train_config": train_cfg.to_dict(),
        "init_sae_config": None if init is None else init.cfg.to_dict(),
    }
    _write_json(document, folder / JOB_FILE)


def read_job(folder: Path) -> TrainingJob:
    """The train_sae arguments `write_job` wrote to `folder`."""
    document = _read_json(folder / JOB_FILE)
    init_cfg = document.get("init_sae_config")
    return TrainingJob(
        data=mapped_rows(folder / ROWS_FILE),
        sae_cfg=SaeConfig(**document["sae_config"]),
        train_cfg=TrainConfig(**document["train_config"]),
        init=None if init_cfg is None else _sae_from_state(SaeConfig(**init_cfg), folder / INIT_FILE),
    )


_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
"""safetensors dtype → the numpy dtype its bytes map to (bfloat16, which numpy lacks, as its 16 bits)."""


def mapped_rows(path: Path, name: str = "rows") -> Tensor:
    """Tensor `name` of the safetensors file `path`, memory-mapped copy-on-write: (n, d) read from disk only where
    indexed. The format is an 8-byte little-endian header size N, N bytes of JSON {name: {dtype, shape,
    data_offsets: [start, end]}}, then the data; the tensor starts at 8 + N + start."""
    with open(path, "rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(header_size))
    entry = header.get(name)
    if entry is None or entry["dtype"] not in _NUMPY_DTYPES:
        raise ValueError(f"{path}: no {name!r} tensor of dtype {sorted(_NUMPY_DTYPES)} (found {entry})")
    start, end = entry["data_offsets"]
    itemsize = np.dtype(_NUMPY_DTYPES[entry["dtype"]]).itemsize
    if end - start != int(np.prod(entry["shape"])) * itemsize or path.stat().st_size < 8 + header_size + end:
        raise ValueError(f"{path}: {name!r} should span {entry['shape']} × {itemsize} bytes; the file is cut or corrupt")
    mapped = np.memmap(path, dtype=_NUMPY_DTYPES[entry["dtype"]], mode="c", offset=8 + header_size + start,
                       shape=tuple(entry["shape"]))
    rows = torch.from_numpy(mapped)
    return rows.view(torch.bfloat16) if entry["dtype"] == "BF16" else rows


def write_outcome(folder: Path, result: TrainResult, world_size: int) -> None:
    """Save the trained SAE and how its training went (rank 0 only)."""
    _save_tensors(result.sae.state_dict(), folder / SAE_FILE)
    outcome = {
        "history": result.history,
        "tokens_seen": result.tokens_seen,
        "seconds": result.seconds,
        "resumed_from_step": result.resumed_from_step,
        "world_size": world_size,
    }
    _write_json(outcome, folder / RESULT_FILE)


def read_outcome(folder: Path, sae_cfg: SaeConfig, device: str) -> TrainResult:
    """The TrainResult rank 0 wrote to `folder`, its SAE on `device` in eval mode."""
    outcome = _read_json(folder / RESULT_FILE)
    sae = _sae_from_state(sae_cfg, folder / SAE_FILE).to(device).eval()
    return TrainResult(
        sae=sae,
        history=outcome["history"],
        tokens_seen=outcome["tokens_seen"],
        seconds=outcome["seconds"],
        resumed_from_step=outcome["resumed_from_step"],
    )


def _summary(result: TrainResult, world_size: int) -> dict[str, Any]:
    last = result.history[-1] if result.history else {}
    return {
        "world_size": world_size,
        "tokens_seen": result.tokens_seen,
        "seconds": result.seconds,
        "final_fvu": last.get("fvu"),
        "final_dead_fraction": last.get("dead_fraction"),
    }


def run(folder: Path) -> None:
    """Train the job in `folder` as one rank of the current torchrun launch."""
    job = read_job(folder)
    device = cuda_device_for_local_rank(job.train_cfg.device)
    group = init_process_group_from_environment(device)
    train_cfg = replace(job.train_cfg, device=device)
    try:
        if not group.is_main:
            train_sae(job.data, job.sae_cfg, train_cfg, init=job.init)
            return
        # Imported here: only rank 0 speaks the protocol, and the others need not load it.
        from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

        if not PipesEnvVarParamsLoader().is_dagster_pipes_process():  # a plain torchrun launch
            result = train_sae(job.data, job.sae_cfg, train_cfg, init=job.init, log=print)
            write_outcome(folder, result, group.world_size)
            return
        with open_dagster_pipes() as pipes:
            result = train_sae(job.data, job.sae_cfg, train_cfg, init=job.init, log=pipes.log.info)
            write_outcome(folder, result, group.world_size)
            pipes.report_custom_message(_summary(result, group.world_size))
    finally:
        destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, type=Path, help="job folder written by write_job")
    run(parser.parse_args(argv).job)


if __name__ == "__main__":
    main()
