"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny tensors gain nothing from OpenMP threads, which only contend on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
