"""The GPU path, run for real: every test here runs on the CPU and, where CUDA is present, on CUDA.

test_device_selection.py checks the choices a GPU deployment makes with CUDA faked; these tests run
the kernels, the training loop (bf16 autocast by default on CUDA), checkpoint resume and the torchrun
launcher on the device itself. On a machine without a GPU their CUDA cases are skipped and the CPU
cases keep the tests themselves honest; on a GPU machine `pytest tests/test_gpu_path.py` is the check.
"""

import dagster
import pytest
import torch

from resources import SaeTrainer
from sae_core.config import SaeConfig, TrainConfig
from sae_core.kernels import fused_topk_encode, sparse_decode
from sae_core.train import train_sae
from tests.sae_core.test_fused_encoder import gradients, tensors, training_loss
from tests.resources.test_training_launcher import D_IN, low_rank_rows

pytestmark = pytest.mark.usefixtures("single_torch_thread")

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
SAE_CFG = SaeConfig(d_in=D_IN, expansion_factor=4, k=4)


def train_cfg(device: str, **overrides) -> TrainConfig:
    settings = {"batch_size": 128, "total_tokens": 128 * 30, "dead_tokens_threshold": 1_000, "device": device}
    return TrainConfig(**{**settings, **overrides})


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_kernels_give_the_dense_autograd_gradients_on(device):
    dead = torch.zeros(20, dtype=torch.bool, device=device)
    dead[[1, 7, 12, 19]] = True
    on_device = {name: value.detach().to(device).requires_grad_() for name, value in tensors(enc_bias_shift=-0.5).items()}
    fused = gradients(on_device, training_loss(on_device, fused=True, dead=dead))
    dense = gradients(on_device, training_loss(on_device, fused=False, dead=dead))
    for name in on_device:
        assert fused[name].device.type == device
        torch.testing.assert_close(fused[name], dense[name], rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


@pytest.mark.parametrize("device", DEVICES)
def test_the_bf16_encoder_keeps_activations_and_gradients_in_float32_on(device):
    t = {name: value.detach().float().to(device).requires_grad_() for name, value in tensors(seed=3).items()}
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        top_acts, top_indices, pre_acts = fused_topk_encode(t["x"], t["b_dec"], t["W_enc"], t["b_enc"], 4)
        loss = (t["x"] - sparse_decode(top_acts, top_indices, t["W_dec"])).pow(2).sum()
    assert pre_acts.dtype == torch.bfloat16 and top_acts.dtype == torch.float32
    for name, grad in gradients(t, loss).items():
        assert grad.dtype == torch.float32 and grad.device.type == device, name


@pytest.mark.parametrize("device", DEVICES)
def test_training_with_the_default_precision_reaches_the_cpu_fp32_quality_on(device):
    """autocast "auto" is bf16 on CUDA and fp32 on the CPU: both must learn the same low-rank data."""
    rows = low_rank_rows()
    reference = train_sae(rows, SAE_CFG, train_cfg("cpu", autocast="off"))
    result = train_sae(rows, SAE_CFG, train_cfg(device))
    assert result.sae.W_enc.device.type == device and result.sae.W_enc.dtype == torch.float32
    assert result.history[-1]["fvu"] < 0.25  # predicting the mean scores 1
    assert result.history[-1]["fvu"] == pytest.approx(reference.history[-1]["fvu"], abs=0.05)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("device", DEVICES)
def test_a_run_interrupted_after_a_checkpoint_resumes_to_the_uninterrupted_weights_on(device, tmp_path):
    rows = low_rank_rows()
    uninterrupted = train_sae(rows, SAE_CFG, train_cfg(device, log_every=1))

    def interrupt_at_step_7(line: str) -> None:
        if line.startswith("step 7/"):
            raise Interrupted

    cfg = train_cfg(device, log_every=1, checkpoint_dir=str(tmp_path), checkpoint_every=4)
    with pytest.raises(Interrupted):
        train_sae(rows, SAE_CFG, cfg, log=interrupt_at_step_7)
    resumed = train_sae(rows, SAE_CFG, cfg)

    assert resumed.resumed_from_step == 4
    # Bit for bit on the CPU; CUDA's atomic index_add_ may sum in another order from run to run.
    tolerance = {"rtol": 0, "atol": 0} if device == "cpu" else {"rtol": 1e-4, "atol": 1e-5}
    for name, value in uninterrupted.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], value, **tolerance, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_the_torchrun_launcher_trains_through_dagster_pipes_as_in_process_on(device):
    rows = low_rank_rows()
    results = {}

    @dagster.asset
    def tiny_sae(context: dagster.AssetExecutionContext, sae_trainer: SaeTrainer) -> dagster.MaterializeResult:
        results[sae_trainer.launcher] = sae_trainer.train(context, rows, SAE_CFG, train_cfg(device))
        return dagster.MaterializeResult()

    for trainer in (SaeTrainer(device=device), SaeTrainer(launcher="torchrun", nproc_per_node=1, device=device)):
        outcome = dagster.materialize([tiny_sae], resources={"sae_trainer": trainer})
        assert outcome.success
    local, launched = results["in_process"], results["torchrun"]
    assert launched.tokens_seen == local.tokens_seen
    for name, value in local.sae.state_dict().items():
        torch.testing.assert_close(launched.sae.state_dict()[name].to(value.device), value, rtol=1e-4, atol=1e-4, msg=name)
