"""Specification of data-parallel SAE training: `train_sae` under torchrun (2 processes, gloo)
computes what one process computes.

One torchrun launch trains every configuration below (process start-up dominates the cost); each
rank saves its own final weights, so the tests can check both that the ranks agree and that they
agree with a single-process run of the same call.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_core.config import SaeConfig, TrainConfig
from sae_core.distributed import ProcessGroupInfo, all_reduce_sum, process_group_info, shard
from sae_core.train import train_sae

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORLD_SIZE = 2
D_IN = 16
# 129 rows split 65 + 64: uneven shards must still give the global batch's losses. A dead-latent
# threshold of 1,000 tokens makes latents die within the run, so AuxK and the shared dead-latent
# clock are exercised, not just the reconstruction loss.
TRAIN_CFG = TrainConfig(
    batch_size=129, total_tokens=129 * 40, dead_tokens_threshold=1_000, log_every=10, b_dec_init="mean"
)
RUNS = {
    "topk": (SaeConfig(d_in=D_IN, expansion_factor=4, k=4), TRAIN_CFG),
    "relu": (SaeConfig(d_in=D_IN, expansion_factor=4, architecture="relu"), TRAIN_CFG),
    "batchtopk": (SaeConfig(d_in=D_IN, expansion_factor=4, k=4, architecture="batchtopk"), TRAIN_CFG),
    "jumprelu": (SaeConfig(d_in=D_IN, expansion_factor=4, k=4, architecture="jumprelu"), TRAIN_CFG),
    "matryoshka_batchtopk": (SaeConfig(d_in=D_IN, expansion_factor=4, k=4, architecture="matryoshka_batchtopk"), TRAIN_CFG),
}
EXACT_ARCHITECTURES = ("topk", "relu", "jumprelu")
"""BatchTopK (and so Matryoshka BatchTopK) selects per shard under data parallelism (see sae_core.train), so it
only matches in distribution."""

# Runs inside each torchrun process: the same train_sae call as the single-process reference.
RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from dataclasses import asdict
    import torch
    from safetensors.torch import load_file, save_file
    from sae_core.config import SaeConfig, TrainConfig
    from sae_core.distributed import destroy_process_group, init_process_group_from_environment
    from sae_core.train import train_sae

    torch.set_num_threads(1)
    folder = sys.argv[1]
    group = init_process_group_from_environment("cpu")
    data = load_file(f"{folder}/rows.safetensors")["rows"]
    for name, cfgs in json.load(open(f"{folder}/runs.json")).items():
        result = train_sae(data, SaeConfig(**cfgs["sae"]), TrainConfig(**cfgs["train"]))
        state = {key: value.contiguous() for key, value in result.sae.state_dict().items()}
        save_file(state, f"{folder}/{name}_rank{group.rank}.safetensors")
        with open(f"{folder}/{name}_rank{group.rank}.json", "w") as file:
            json.dump({"world_size": group.world_size, "history": result.history}, file)

    # Checkpoints: rank 0 writes them, every rank resumes from them.
    cfgs = json.load(open(f"{folder}/runs.json"))["topk"]
    checkpointed = TrainConfig(**{**cfgs["train"], "checkpoint_dir": f"{folder}/checkpoints", "checkpoint_every": 10})
    first = train_sae(data, SaeConfig(**cfgs["sae"]), checkpointed)
    resumed = train_sae(data, SaeConfig(**cfgs["sae"]), checkpointed)
    same = all(torch.equal(a, b) for a, b in zip(first.sae.state_dict().values(), resumed.sae.state_dict().values()))
    with open(f"{folder}/resume_rank{group.rank}.json", "w") as file:
        json.dump({"resumed_from_step": resumed.resumed_from_step, "same_weights": same}, file)
    destroy_process_group()
    """
)


def low_rank_rows(n: int = 1024) -> torch.Tensor:
    """Rank-4 Gaussian in 16 dimensions, shifted off the origin: k = 4 latents can explain it."""
    basis = torch.randn(4, D_IN, generator=torch.Generator().manual_seed(1))
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(2)) @ basis + 2.0


@pytest.fixture(scope="module")
def torchrun_results(tmp_path_factory):
    """{run name: ([state of rank 0, state of rank 1], [log of rank 0, log of rank 1])} from one launch,
    and "folder": the launch's folder (checkpoints, resume reports)."""
    folder = tmp_path_factory.mktemp("ddp")
    save_file({"rows": low_rank_rows()}, folder / "rows.safetensors")
    runs = {name: {"sae": sae_cfg.to_dict(), "train": train_cfg.to_dict()} for name, (sae_cfg, train_cfg) in RUNS.items()}
    (folder / "runs.json").write_text(json.dumps(runs))
    script = folder / "train_rank.py"
    script.write_text(RANK_SCRIPT)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD_SIZE}",
        str(script), str(folder),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    completed = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, f"torchrun failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    results = {
        name: (
            [load_file(folder / f"{name}_rank{rank}.safetensors") for rank in range(WORLD_SIZE)],
            [json.loads((folder / f"{name}_rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)],
        )
        for name in RUNS
    }
    return {**results, "folder": folder}


@pytest.fixture(scope="module")
def single_process_results():
    rows = low_rank_rows()
    return {name: train_sae(rows, sae_cfg, train_cfg) for name, (sae_cfg, train_cfg) in RUNS.items()}


def test_each_rank_ran_in_a_two_process_group(torchrun_results):
    for name in RUNS:
        _, logs = torchrun_results[name]
        assert [log["world_size"] for log in logs] == [WORLD_SIZE, WORLD_SIZE]


@pytest.mark.parametrize("name", list(RUNS))
def test_ranks_end_with_identical_weights(torchrun_results, name):
    states, logs = torchrun_results[name]
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[0][key], rtol=0, atol=0, msg=f"{name} {key}")
    assert logs[0]["history"] == logs[1]["history"]


@pytest.mark.parametrize("name", EXACT_ARCHITECTURES)
def test_two_process_training_matches_single_process_weights(torchrun_results, single_process_results, name):
    states, _ = torchrun_results[name]
    reference = single_process_results[name].sae.state_dict()
    assert set(states[0]) == set(reference)
    for key, value in reference.items():
        torch.testing.assert_close(states[0][key], value, rtol=0, atol=1e-4, msg=f"{name} {key}")


@pytest.mark.parametrize("name", EXACT_ARCHITECTURES)
def test_two_process_history_reports_global_batch_losses(torchrun_results, single_process_results, name):
    """fvu, auxk_loss, l1_loss, l0 and dead_fraction in the log are the whole batch's, not a shard's."""
    _, logs = torchrun_results[name]
    reference = single_process_results[name].history
    distributed = logs[0]["history"]
    assert [r["step"] for r in distributed] == [r["step"] for r in reference]
    for ours, theirs in zip(distributed, reference):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-3, abs=1e-5), (name, ours["step"], key)


def test_reference_run_exercises_auxk_on_dead_latents(single_process_results):
    """Guards the comparison above: with no dead latent, AuxK's global normaliser would go untested."""
    assert any(record["auxk_loss"] > 0 for record in single_process_results["topk"].history)


@pytest.mark.parametrize("name", ["batchtopk", "matryoshka_batchtopk"])
def test_batchtopk_two_process_training_reaches_single_process_quality(torchrun_results, single_process_results, name):
    _, logs = torchrun_results[name]
    single_fvu = single_process_results[name].history[-1]["fvu"]
    assert logs[0]["history"][-1]["fvu"] == pytest.approx(single_fvu, abs=0.05)
    assert logs[0]["history"][-1]["threshold"] > 0


def test_rank_zero_writes_one_checkpoint_that_every_rank_resumes_from(torchrun_results):
    folder = torchrun_results["folder"]
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["train_state.safetensors"]
    for rank in range(WORLD_SIZE):
        resumed = json.loads((folder / f"resume_rank{rank}.json").read_text())
        assert resumed == {"resumed_from_step": 40, "same_weights": True}


def test_shards_partition_the_batch_with_sizes_differing_by_at_most_one():
    rows = torch.arange(7)
    shards = [shard(rows, ProcessGroupInfo(rank=rank, world_size=3)) for rank in range(3)]
    assert [s.tolist() for s in shards] == [[0, 1, 2], [3, 4], [5, 6]]


def test_a_batch_smaller_than_the_world_size_is_rejected():
    with pytest.raises(ValueError, match="cannot be split over 3 processes"):
        shard(torch.arange(2), ProcessGroupInfo(rank=0, world_size=3))


def test_without_a_process_group_collectives_are_the_identity():
    group = process_group_info()
    assert group == ProcessGroupInfo(rank=0, world_size=1) and group.is_main and not group.is_distributed
    value = torch.tensor([1.5, -2.0])
    assert all_reduce_sum(value, group) is value and value.tolist() == [1.5, -2.0]
    assert shard(torch.arange(5), group).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("name", list(RUNS))
def test_bf16_autocast_option_trains_on_cpu_and_stays_close_to_fp32(name):
    rows = low_rank_rows()
    sae_cfg, train_cfg = RUNS[name]
    fp32 = train_sae(rows, sae_cfg, train_cfg)
    bf16 = train_sae(rows, sae_cfg, TrainConfig(**{**train_cfg.to_dict(), "autocast": "bf16"}))
    assert bf16.sae.W_enc.dtype == torch.float32  # autocast leaves the weights in fp32
    assert bf16.history[-1]["fvu"] == pytest.approx(fp32.history[-1]["fvu"], abs=0.05)
    assert not torch.equal(bf16.sae.W_enc, fp32.sae.W_enc)  # the option really changed the arithmetic


def test_unknown_autocast_mode_is_rejected():
    with pytest.raises(ValueError, match="TrainConfig.autocast"):
        TrainConfig(autocast="fp8")
