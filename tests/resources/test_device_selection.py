"""Which device, precision and collective backend each layer picks, with CUDA faked.

This machine has no GPU, so these tests check the choices, not CUDA kernels: a GPU deployment must
only need configuration, and these are the decisions that configuration drives.
"""

import pytest
import torch
import torch.distributed as dist

from resources.compute import ComputeResource
from sae_core import distributed
from sae_core.config import TrainConfig
from sae_core.train import _autocast_dtype


@pytest.mark.parametrize(
    ("autocast", "device", "expected"),
    [
        ("auto", "cuda", torch.bfloat16),
        ("auto", "cuda:1", torch.bfloat16),
        ("auto", "cpu", None),
        ("bf16", "cpu", torch.bfloat16),
        ("off", "cuda", None),
    ],
)
def test_autocast_is_bf16_on_cuda_by_default_and_follows_the_setting(autocast, device, expected):
    assert _autocast_dtype(TrainConfig(autocast=autocast), torch.device(device)) == expected


def test_compute_resource_takes_cuda_when_present_and_refuses_it_when_absent(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ComputeResource().torch_device() == "cuda"
    assert ComputeResource(device="cuda:1").torch_device() == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ComputeResource().torch_device() == "cpu"
    with pytest.raises(ValueError, match="'cuda' was requested but CUDA is not available"):
        ComputeResource(device="cuda").torch_device()


@pytest.fixture
def torchrun_launch(monkeypatch):
    """A two-process torchrun environment (this process local rank 1) whose GPU and process-group
    calls are recorded, not made: returns the dict they write into."""
    chosen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.setdefault("device", device))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: chosen.setdefault("backend", backend))
    return chosen


def test_each_torchrun_rank_takes_its_own_gpu_and_nccl(torchrun_launch):
    distributed.init_process_group_from_environment("cuda")
    assert torchrun_launch == {"device": "cuda:1", "backend": "nccl"}
    assert distributed.cuda_device_for_local_rank("cuda") == "cuda:1"
    assert distributed.cuda_device_for_local_rank("cuda:0") == "cuda:0"  # an explicit GPU is kept


def test_cpu_ranks_use_gloo_and_touch_no_gpu(torchrun_launch):
    distributed.init_process_group_from_environment("cpu")
    assert torchrun_launch == {"backend": "gloo"}
