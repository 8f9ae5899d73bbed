"""Specification of the SaeTrainer resource: in-process and torchrun (via dagster-pipes) training
return the same TrainResult; misconfiguration and worker failures give clear errors."""

import dagster
import pytest
import torch

from resources import SaeTrainer
from sae_core.config import SaeConfig, TrainConfig
from sae_core.train import TrainResult

pytestmark = pytest.mark.usefixtures("single_torch_thread")

D_IN = 16
SAE_CFG = SaeConfig(d_in=D_IN, expansion_factor=4, k=4)
TRAIN_CFG = TrainConfig(batch_size=128, total_tokens=128 * 30, dead_tokens_threshold=1_000, log_every=10)


def low_rank_rows(n: int = 1024) -> torch.Tensor:
    """Rank-4 Gaussian in 16 dimensions, shifted off the origin: k = 4 latents can explain it."""
    basis = torch.randn(4, D_IN, generator=torch.Generator().manual_seed(1))
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(2)) @ basis + 2.0


def train_in_asset(trainer: SaeTrainer, data: torch.Tensor) -> tuple[TrainResult, list[str]]:
    """Materialize a one-asset graph that trains through `trainer`; the result and the run's log lines."""
    results: list[TrainResult] = []

    @dagster.asset
    def tiny_sae(context: dagster.AssetExecutionContext, sae_trainer: SaeTrainer) -> dagster.MaterializeResult:
        results.append(sae_trainer.train(context, data, SAE_CFG, TRAIN_CFG))
        return dagster.MaterializeResult(metadata={"fvu": results[0].history[-1]["fvu"]})

    instance = dagster.DagsterInstance.ephemeral()
    outcome = dagster.materialize([tiny_sae], resources={"sae_trainer": trainer}, instance=instance)
    assert outcome.success
    messages = [record.user_message for record in instance.all_logs(outcome.run_id)]
    return results[0], messages


@pytest.fixture(scope="module")
def in_process_and_torchrun():
    data = low_rank_rows()
    return (
        train_in_asset(SaeTrainer(), data),
        train_in_asset(SaeTrainer(launcher="torchrun", nproc_per_node=2, device="cpu"), data),
    )


def test_torchrun_launcher_returns_the_in_process_weights(in_process_and_torchrun):
    (local, _), (distributed, _) = in_process_and_torchrun
    reference = local.sae.state_dict()
    assert set(distributed.sae.state_dict()) == set(reference)
    for key, value in distributed.sae.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=1e-4, msg=key)


def test_torchrun_launcher_returns_the_in_process_training_record(in_process_and_torchrun):
    (local, _), (distributed, _) = in_process_and_torchrun
    assert distributed.tokens_seen == local.tokens_seen == 30 * 128
    assert distributed.resumed_from_step == 0 and distributed.seconds > 0
    assert [r["step"] for r in distributed.history] == [r["step"] for r in local.history] == [10, 20, 30]
    assert distributed.history[-1]["fvu"] == pytest.approx(local.history[-1]["fvu"], rel=1e-3)
    assert not distributed.sae.training  # eval mode, as train_sae returns it


def test_torchrun_worker_log_and_summary_reach_the_dagster_run(in_process_and_torchrun):
    _, (_, messages) = in_process_and_torchrun
    assert any("split over 2 processes" in message for message in messages)  # rank 0's train_sae log
    assert any("step 30/30" in message for message in messages)
    assert any("torchrun SAE training finished" in message and "'world_size': 2" in message for message in messages)


def test_worker_failure_raises_with_the_worker_stderr():
    wrong_width = low_rank_rows()[:, : D_IN - 1]
    with pytest.raises(RuntimeError, match="SAE training under torchrun failed") as caught:
        train_in_asset(SaeTrainer(launcher="torchrun", nproc_per_node=2), wrong_width)
    assert "activations have width 15, but SaeConfig.d_in is 16" in str(caught.value)  # the workers' stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"launcher": "slurm"}, "launcher must be one of"),
        ({"launcher": "torchrun", "nproc_per_node": 0}, "nproc_per_node must be >= 1"),
        ({"launcher": "torchrun", "torchrun_args": ["--nproc_per_node=4"]}, "torchrun_args must not set"),
    ],
)
def test_misconfigured_trainer_is_rejected_before_training(settings, message):
    context = dagster.build_asset_context()
    with pytest.raises(ValueError, match=message):
        SaeTrainer(**settings).train(context, low_rank_rows(), SAE_CFG, TRAIN_CFG)


def test_torchrun_command_is_standalone_by_default_and_takes_extra_rendezvous_args(tmp_path):
    default = SaeTrainer(launcher="torchrun", nproc_per_node=8).torchrun_command(tmp_path)
    assert default[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc_per_node=8" in default and default[-2:] == ["--job", str(tmp_path)]
    multi_node = SaeTrainer(launcher="torchrun", torchrun_args=["--nnodes=2"]).torchrun_command(tmp_path)
    assert "--nnodes=2" in multi_node and "--standalone" not in multi_node


def test_a_nan_in_the_rows_only_another_rank_reads_fails_every_rank():
    rows = low_rank_rows()
    rows[1, 3] = float("nan")  # row 1: rank 1's stride of the check (rows 1, 3, 5, ...), never rank 0's
    with pytest.raises(RuntimeError, match="SAE training under torchrun failed") as caught:
        train_in_asset(SaeTrainer(launcher="torchrun", nproc_per_node=2), rows)
    assert "activations contain NaN/inf" in str(caught.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_workers_map_the_rows_file_instead_of_loading_it(tmp_path, dtype):
    from safetensors.torch import save_file

    from resources.sae_training_worker import mapped_rows

    rows = low_rank_rows().to(dtype)
    save_file({"rows": rows, "after": torch.ones(3)}, str(tmp_path / "rows.safetensors"))
    mapped = mapped_rows(tmp_path / "rows.safetensors")
    assert mapped.dtype == dtype and torch.equal(mapped, rows)
    assert torch.equal(mapped[torch.tensor([7, 0, 1023])], rows[[7, 0, 1023]])


def test_a_cut_rows_file_is_refused_naming_it(tmp_path):
    from safetensors.torch import save_file

    from resources.sae_training_worker import mapped_rows

    path = tmp_path / "rows.safetensors"
    save_file({"rows": low_rank_rows()}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="rows.safetensors.*cut or corrupt"):
        mapped_rows(path)
