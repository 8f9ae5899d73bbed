"""Data-parallel training helpers: who am I, which rows are mine, and the few collectives training needs.

`train_sae` runs unchanged under `torchrun --nproc_per_node=W`: every rank draws the same global
batch (the same seed, the same generator), keeps its own contiguous shard of it, and the ranks sum
what must be global. Outside torch.distributed (or with W = 1) every helper here is the identity,
so the single-process path runs the same code with no communication.

    global batch rows  r_0 … r_{n−1}           identical on every rank
    rank i's shard     torch.tensor_split(rows, W)[i]        sizes differ by at most one

Only sums are ever reduced (and one minimum): sums of per-token quantities are exactly additive over
shards, so a loss written as "this shard's part of the global sum, divided by a global normaliser"
has gradients that add up across ranks to the single-process gradient.

`init_process_group_from_environment` is for launchers' worker scripts (torchrun sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT); the library itself never initialises anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class ProcessGroupInfo:
    """Where this process stands in data-parallel training."""

    rank: int = 0
    """This process's index, 0..world_size−1 (0 when not distributed)."""
    world_size: int = 1
    """Number of processes sharing each batch (1 when not distributed)."""

    @property
    def is_distributed(self) -> bool:
        """True when there is someone to talk to: collectives are then real communication."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and talks to the outside world."""
        return self.rank == 0


def process_group_info() -> ProcessGroupInfo:
    """Rank and world size of the default process group, or (0, 1) if torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return ProcessGroupInfo(rank=dist.get_rank(), world_size=dist.get_world_size())
    return ProcessGroupInfo()


def collective_device() -> torch.device:
    """Where a tensor must be for a collective of the default group: the current GPU under NCCL, else the CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(rows: Tensor, group: ProcessGroupInfo) -> Tensor:
    """This rank's contiguous part of the global batch `rows` (n, ...): split W ways, sizes ±1.

    ValueError when some rank would get no row (n < W): every rank must see data for the loss to be defined.
    """
    if len(rows) < group.world_size:
        raise ValueError(
            f"a batch of {len(rows)} rows cannot be split over {group.world_size} processes; "
            "raise TrainConfig.batch_size to at least the world size"
        )
    if not group.is_distributed:
        return rows
    return torch.tensor_split(rows, group.world_size)[group.rank]


def all_reduce_sum(tensor: Tensor, group: ProcessGroupInfo) -> Tensor:
    """Sum `tensor` over ranks, in place, and return it (no-op with one process). Not differentiable:
    use it on detached statistics and on gradients."""
    if group.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: Tensor, group: ProcessGroupInfo) -> Tensor:
    """Elementwise minimum of `tensor` over ranks, in place, and return it (no-op with one process)."""
    if group.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def all_reduce_gradients(module: torch.nn.Module, group: ProcessGroupInfo) -> None:
    """Sum every parameter's .grad over ranks (parameters without a gradient are skipped on every rank alike).

    A sum, not DDP's mean: each rank's loss is its shard's share of the global loss, so the shares'
    gradients add up to the gradient of the global loss.
    """
    if not group.is_distributed:
        return
    for parameter in module.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)


def barrier(group: ProcessGroupInfo) -> None:
    """Wait until every rank gets here (no-op with one process)."""
    if group.is_distributed:
        dist.barrier()


@torch.no_grad()
def broadcast_module_state(module: torch.nn.Module, group: ProcessGroupInfo) -> None:
    """Overwrite every parameter and buffer with rank 0's, so all ranks start from one state.

    Ranks that ran the same deterministic initialisation already agree; this makes agreement a fact
    rather than an assumption (a different BLAS, thread count or device could round differently).
    """
    if not group.is_distributed:
        return
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=0)


def init_process_group_from_environment(device: str) -> ProcessGroupInfo:
    """Join the process group a launcher (torchrun) describes in the environment, if any.

    Backend: NCCL for a CUDA `device`, gloo otherwise. On CUDA each process takes the GPU
    `cuda:LOCAL_RANK`; the device string to train on is then `cuda_device_for_local_rank(device)`.
    Without WORLD_SIZE in the environment this does nothing and returns (0, 1).
    """
    if "WORLD_SIZE" not in os.environ:
        return ProcessGroupInfo()
    uses_cuda = torch.device(device).type == "cuda"
    if uses_cuda:
        torch.cuda.set_device(cuda_device_for_local_rank(device))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if uses_cuda else "gloo")
    return process_group_info()


def cuda_device_for_local_rank(device: str) -> str:
    """`device` itself, except a bare "cuda" under a launcher, which becomes "cuda:LOCAL_RANK"."""
    if device != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    return f"cuda:{int(os.environ['LOCAL_RANK'])}"


def destroy_process_group() -> None:
    """Leave the process group if this process joined one (the counterpart of init_process_group_from_environment)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
