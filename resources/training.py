"""SAE training as a Dagster resource: in this process, or data-parallel under torchrun via dagster-pipes.

    launcher "in_process"   sae_core.train.train_sae in the asset's own process (the default)
    launcher "torchrun"     python -m torch.distributed.run [torchrun_args] --nproc_per_node N
                                resources/sae_training_worker.py --job <folder>
                            run by dagster.PipesSubprocessClient: rank 0's training log arrives in
                            the asset's log, its summary as a pipes custom message

Both return the same `TrainResult`: the worker saves the SAE's exact state (input scale included),
so the choice of launcher changes where the arithmetic runs, not what comes back. A GPU node needs
only configuration (`launcher: torchrun`, `nproc_per_node: 8`, `device: cuda`); several nodes add
their rendezvous through `torchrun_args` and a `work_dir` that every node can read.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    ConfigurableResource,
    OpExecutionContext,
    PipesSubprocessClient,
)
from pydantic import Field
from torch import Tensor

from resources import sae_training_worker
from sae_core.config import SaeConfig, TrainConfig
from sae_core.sae import SparseAutoencoder
from sae_core.train import TrainResult, train_sae
from sae_core.training_data import TrainingData

LAUNCHERS = ("in_process", "torchrun")
WORKER_SCRIPT = Path(sae_training_worker.__file__).resolve()
PROJECT_ROOT = WORKER_SCRIPT.parents[1]
# torchrun options the launcher sets itself; passing them in torchrun_args would contradict it.
_RESERVED_TORCHRUN_OPTIONS = ("--nproc_per_node", "--nproc-per-node", "--log-dir", "--log_dir", "--tee", "-t")
_STDERR_TAIL_CHARS = 4_000


class SaeTrainer(ConfigurableResource):
    """Where `train_sae` runs: in the asset's process, or on `nproc_per_node` torchrun processes."""

    launcher: str = Field(default="in_process", description="'in_process' or 'torchrun'.")
    nproc_per_node: int = Field(default=1, description="torchrun processes on this node (GPUs, on a GPU node).")
    torchrun_args: list[str] = Field(
        default_factory=list,
        description="Extra torchrun options, e.g. ['--nnodes=2', '--rdzv-endpoint=host:29400']; "
        "empty means ['--standalone'] (one node).",
    )
    device: str = Field(
        default="",
        description="'cpu', 'cuda' (each torchrun process then takes cuda:LOCAL_RANK) or 'cuda:N'; "
        "empty keeps the TrainConfig's device.",
    )
    work_dir: str = Field(
        default="",
        description="Parent folder of torchrun job folders (rows, configs, result); must be readable "
        "by every node. Empty means the system temp folder.",
    )

    def _check(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"SaeTrainer.launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        if self.nproc_per_node < 1:
            raise ValueError(f"SaeTrainer.nproc_per_node must be >= 1, got {self.nproc_per_node}")
        reserved = [arg for arg in self.torchrun_args if arg.split("=")[0] in _RESERVED_TORCHRUN_OPTIONS]
        if reserved:
            raise ValueError(
                f"SaeTrainer.torchrun_args must not set {reserved}: nproc_per_node is its own field, "
                "and the launcher collects the workers' logs itself"
            )

    def train(
        self,
        context: AssetExecutionContext | OpExecutionContext,
        data: TrainingData,
        sae_cfg: SaeConfig,
        train_cfg: TrainConfig,
        init: SparseAutoencoder | None = None,
    ) -> TrainResult:
        """train_sae(data, sae_cfg, train_cfg, init) through the configured launcher; log to `context`.

        `data`: rows in memory, or `sae_core.activation_stream.StoreRows` streamed from a store in process. The
        torchrun job folder carries rows, so a stream is gathered into it first (memory then grows with them).

        Raises ValueError for a misconfigured resource, RuntimeError (with the workers' stderr) when
        a torchrun job fails, and whatever train_sae raises for bad data in the in-process launcher.
        """
        self._check()
        if self.device:
            train_cfg = replace(train_cfg, device=self.device)
        if self.launcher == "in_process":
            return train_sae(data, sae_cfg, train_cfg, init=init, log=context.log.info)
        if not isinstance(data, Tensor):
            context.log.info(f"torchrun: gathering the {len(data)} streamed training rows into the job folder")
            data = data.materialize()
        with tempfile.TemporaryDirectory(prefix="sae-training-", dir=self.work_dir or None) as folder:
            return self._train_with_torchrun(context, Path(folder), data, sae_cfg, train_cfg, init)

    def torchrun_command(self, job_folder: Path) -> list[str]:
        """The command that runs the job in `job_folder`; each rank's output is teed into job_folder/logs."""
        return [
            sys.executable, "-m", "torch.distributed.run",
            *(self.torchrun_args or ["--standalone"]),
            f"--nproc_per_node={self.nproc_per_node}",
            f"--log-dir={job_folder / 'logs'}", "--tee=3",
            str(WORKER_SCRIPT), "--job", str(job_folder),
        ]  # fmt: skip

    def _train_with_torchrun(
        self,
        context: AssetExecutionContext | OpExecutionContext,
        job_folder: Path,
        data: Tensor,
        sae_cfg: SaeConfig,
        train_cfg: TrainConfig,
        init: SparseAutoencoder | None,
    ) -> TrainResult:
        sae_training_worker.write_job(job_folder, data, sae_cfg, train_cfg, init)
        python_path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
        context.log.info(f"training the SAE on {self.nproc_per_node} torchrun process(es), device {train_cfg.device}")
        try:
            invocation = PipesSubprocessClient().run(
                context=context,
                command=self.torchrun_command(job_folder),
                env={"PYTHONPATH": python_path},
            )
        # A failed worker surfaces as dagster's DagsterPipesExecutionError, which dagster does not
        # export; catching broadly is safe because the error is re-raised, only with the workers'
        # stderr added (a cancelled run raises a BaseException, which passes through untouched).
        except Exception as error:
            raise RuntimeError(
                f"SAE training under torchrun failed ({error}).\n{_worker_stderr(job_folder / 'logs')}"
            ) from error
        for summary in invocation.get_custom_messages():
            context.log.info(f"torchrun SAE training finished: {summary}")
        return sae_training_worker.read_outcome(job_folder, sae_cfg, train_cfg.device)


def _worker_stderr(log_dir: Path) -> str:
    """The tail of every rank's stderr log that torchrun teed under `log_dir`, rank by rank."""
    logs = sorted(log_dir.rglob("stderr.log"))
    tails = []
    for path in logs:
        text = path.read_text(errors="replace").strip()
        if text:
            tails.append(f"--- {path.relative_to(log_dir)} ---\n{text[-_STDERR_TAIL_CHARS:]}")
    if not tails:
        return f"No worker wrote to stderr under {log_dir}: torchrun itself failed; its own output precedes this error."
    return "Worker stderr:\n" + "\n".join(tails)
