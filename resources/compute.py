"""Compute: which torch device runs the model and the SAE training."""

from __future__ import annotations

import torch
from dagster import ConfigurableResource
from pydantic import Field

GPU_POOL = "gpu"
"""The Dagster pool of the steps that use the accelerator; the instance's limit for it is how many share one GPU."""
GPU_QUEUE = "gpu"
"""The celery queue of those steps: only workers started with `-q gpu` (on a GPU machine) take them."""
CELERY_QUEUE_TAG = "dagster-celery/queue"
# dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG, spelt out so that a laptop without the cluster extra loads the
# assets; tests/deploy/test_celery_cluster.py checks the two agree.
GPU_OP = {"pool": GPU_POOL, "tags": {CELERY_QUEUE_TAG: GPU_QUEUE}}
"""The decorator arguments of every op that puts the model or an SAE on the compute device (`@op(**GPU_OP)`):
its pool (how many such steps share a GPU, per instance) and its celery queue (which workers may run it)."""
GPU_STEP = {"pool": GPU_POOL, "op_tags": GPU_OP["tags"]}
"""The same for an asset's own op (`@asset(**GPU_STEP)`)."""


class ComputeResource(ConfigurableResource):
    """CUDA when present (or when asked for), the CPU otherwise.

    A GPU deployment sets `device: cuda` (and installs a CUDA torch); nothing else changes.
    """

    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    num_threads: int = Field(default=0, description="CPU threads for torch; 0 keeps torch's default.")

    def torch_device(self) -> str:
        if self.num_threads > 0:
            torch.set_num_threads(self.num_threads)
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"compute device {self.device!r} was requested but CUDA is not available")
        return self.device
