"""Specification of resumable training (sae_core.checkpoint, TrainConfig.checkpoint_dir).

The central promise: a run killed mid-way and started again ends with exactly the weights of a run
that was never interrupted. It is tested for real: training runs in a child process that SIGKILLs
itself (no cleanup, no atexit) from its log callback a few steps after a checkpoint was written.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sae_core.checkpoint import CHECKPOINT_FILENAME
from sae_core.config import SaeConfig, TrainConfig
from sae_core.train import train_sae

PROJECT_ROOT = Path(__file__).resolve().parents[2]
D_IN = 16
BATCH_SIZE, N_STEPS, CHECKPOINT_EVERY, KILL_AT_STEP = 64, 12, 4, 7

# Every architecture with the default optimizer, and the other optimizers (whose checkpoints hold
# other state tensors) on TopK: "<architecture>" or "<architecture>-<optimizer>".
RUNS = ("topk", "batchtopk", "relu", "jumprelu", "matryoshka_batchtopk", "topk-adam", "topk-schedule_free_signum")

# The child trains an SAE for each named run on fixed synthetic data (checkpointing into
# <checkpoint_root>/<run> unless the root is "") and writes each final state and result.
# With kill_at_step > 0 it SIGKILLs itself when the log reports that step, i.e. after the
# checkpoint of step 4 and before the one of step 8: the re-run must redo steps 5..7 and carry on.
CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from sae_core.config import SaeConfig, TrainConfig
    from sae_core.train import train_sae

    checkpoint_root, out_dir, kill_at_step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(500, 4, generator=generator) @ torch.randn(4, {d_in}, generator=generator) + 1.0

    def log(line):
        if kill_at_step and line.startswith(f"step {{kill_at_step}}/"):
            os.kill(os.getpid(), signal.SIGKILL)

    for run in sys.argv[4].split(","):
        architecture, _, optimizer = run.partition("-")
        k = None if architecture == "relu" else 4
        sae_cfg = SaeConfig(d_in={d_in}, expansion_factor=4, k=k, architecture=architecture)
        train_cfg = TrainConfig(
            batch_size={batch_size}, total_tokens={batch_size} * {n_steps}, log_every=1, seed=3,
            dead_tokens_threshold=200, checkpoint_every={checkpoint_every},
            checkpoint_dir=os.path.join(checkpoint_root, run) if checkpoint_root else None,
            **({{"optimizer": optimizer}} if optimizer else {{}}),
        )
        result = train_sae(data, sae_cfg, train_cfg, log=log)
        state = {{name: t.contiguous() for name, t in result.sae.state_dict().items()}}
        save_file(state, os.path.join(out_dir, run + ".safetensors"))
        with open(os.path.join(out_dir, run + ".json"), "w") as file:
            json.dump({{"history": result.history, "resumed_from_step": result.resumed_from_step}}, file)
    """
).format(d_in=D_IN, batch_size=BATCH_SIZE, n_steps=N_STEPS, checkpoint_every=CHECKPOINT_EVERY)


def start_child(tmp_path: Path, runs: list[str], checkpoint_root: Path | None, kill_at_step: int, name: str):
    """Start the child script; returns the process (stdout/stderr piped) and its output folder."""
    out_dir = tmp_path / name
    out_dir.mkdir()
    # One script per child: rewriting a shared one could truncate it under a child still reading it,
    # which then runs an empty script and exits 0.
    script = tmp_path / f"{name}.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    arguments = [str(checkpoint_root or ""), str(out_dir), str(kill_at_step), ",".join(runs)]
    process = subprocess.Popen(
        [sys.executable, str(script), *arguments],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return process, out_dir


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=600)
    return process.returncode, stderr


def checkpoint_step(path: Path) -> int:
    with safe_open(path, framework="pt") as file:
        return json.loads(file.metadata()["peerlens_checkpoint"])["step"]


def test_a_killed_and_rerun_training_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    checkpoint_root = tmp_path / "checkpoints"
    # The uninterrupted reference and one killed process per run are independent: run them together.
    uninterrupted, uninterrupted_out = start_child(tmp_path, list(RUNS), None, 0, "uninterrupted")
    killed = [start_child(tmp_path, [run], checkpoint_root, KILL_AT_STEP, f"killed-{run}")[0] for run in RUNS]
    for process in killed:
        returncode, stderr = finish(process)
        assert returncode == -signal.SIGKILL, stderr
    returncode, stderr = finish(uninterrupted)
    assert returncode == 0, stderr
    for run in RUNS:
        assert checkpoint_step(checkpoint_root / run / CHECKPOINT_FILENAME) == 4

    resumed, resumed_out = start_child(tmp_path, list(RUNS), checkpoint_root, 0, "resumed")
    returncode, stderr = finish(resumed)
    assert returncode == 0, stderr

    for run in RUNS:
        resumed_state = load_file(resumed_out / f"{run}.safetensors")
        reference_state = load_file(uninterrupted_out / f"{run}.safetensors")
        assert set(resumed_state) == set(reference_state)
        for name, reference in reference_state.items():
            assert torch.equal(resumed_state[name], reference), (run, name)
        resumed_result = json.loads((resumed_out / f"{run}.json").read_text())
        reference_result = json.loads((uninterrupted_out / f"{run}.json").read_text())
        assert resumed_result["resumed_from_step"] == 4 and reference_result["resumed_from_step"] == 0
        assert resumed_result["history"] == reference_result["history"]
        checkpoint_dir = checkpoint_root / run
        assert checkpoint_step(checkpoint_dir / CHECKPOINT_FILENAME) == N_STEPS
        assert sorted(path.name for path in checkpoint_dir.iterdir()) == [CHECKPOINT_FILENAME]


# ---- in-process behaviour -------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def small_data(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(300, 4, generator=generator) @ torch.randn(4, D_IN, generator=generator) + 1.0


SAE_CFG = SaeConfig(d_in=D_IN, expansion_factor=4, k=4)


def train_cfg(checkpoint_dir: Path, **overrides) -> TrainConfig:
    settings = {"batch_size": 32, "total_tokens": 32 * 6, "checkpoint_every": 2, "checkpoint_dir": str(checkpoint_dir)}
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture
def finished_run(tmp_path):
    """A completed run of 6 steps whose checkpoint lies in tmp_path/checkpoints."""
    checkpoint_dir = tmp_path / "checkpoints"
    result = train_sae(small_data(), SAE_CFG, train_cfg(checkpoint_dir))
    return checkpoint_dir / CHECKPOINT_FILENAME, result


def test_a_checkpoint_is_one_safetensors_file_with_the_state_tensors_and_a_json_header(finished_run):
    path, result = finished_run
    with safe_open(path, framework="pt") as file:
        names = set(file.keys())
        document = json.loads(file.metadata()["peerlens_checkpoint"])
    for parameter in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert f"sae/{parameter}" in names
        assert {f"optimizer/{parameter}/{key}" for key in ("step", "z", "x", "v")} <= names
    progress = {"progress/tokens_since_fired", "progress/batch_order", "progress/generator_state"}
    assert {"sae/input_scale", *progress} <= names
    assert document["step"] == 6 and document["format_version"] == 2
    assert document["history"] == result.history
    assert document["identity"]["sae_config"] == SAE_CFG.to_dict()
    assert "checkpoint_dir" not in document["identity"]["train_config"]


def test_rerunning_a_finished_run_returns_its_weights_without_training(finished_run):
    path, first = finished_run
    before = path.read_bytes()
    again = train_sae(small_data(), SAE_CFG, train_cfg(path.parent))
    assert again.resumed_from_step == 6 and again.history == first.history
    for name, value in first.sae.state_dict().items():
        assert torch.equal(again.sae.state_dict()[name], value), name
    assert path.read_bytes() == before


def test_logging_and_checkpoint_cadence_may_change_between_the_parts_of_a_run(finished_run):
    path, _ = finished_run
    again = train_sae(small_data(), SAE_CFG, train_cfg(path.parent, log_every=3, checkpoint_every=5))
    assert again.resumed_from_step == 6


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"train": {"seed": 1}}, "seed"),
        ({"train": {"lr": 1e-3}}, "lr"),
        ({"sae": {"k": 3}}, "k"),
        ({"sae": {"architecture": "batchtopk"}}, "architecture"),
        ({"data_seed": 1}, "sampled_rows_sha256"),
    ],
)
def test_a_checkpoint_of_another_configuration_or_data_is_refused_and_kept(finished_run, change, named):
    path, _ = finished_run
    before = path.read_bytes()
    sae_cfg = SaeConfig(**{**SAE_CFG.to_dict(), **change.get("sae", {})})
    with pytest.raises(ValueError, match=rf"{path}.*belongs to another run.*{named}"):
        train_sae(small_data(change.get("data_seed", 0)), sae_cfg, train_cfg(path.parent, **change.get("train", {})))
    assert path.read_bytes() == before


def test_a_truncated_checkpoint_is_refused_naming_the_file_and_left_as_it_is(finished_run):
    path, _ = finished_run
    truncated = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(truncated)
    with pytest.raises(ValueError, match=rf"{path}.*not a readable safetensors file"):
        train_sae(small_data(), SAE_CFG, train_cfg(path.parent))
    assert path.read_bytes() == truncated


def test_a_checkpoint_with_a_tensor_of_the_wrong_shape_is_refused_naming_it(finished_run):
    path, _ = finished_run
    with safe_open(path, framework="pt") as file:
        metadata = file.metadata()
    tensors = load_file(path)
    tensors["sae/W_dec"] = tensors["sae/W_dec"][:-1].contiguous()
    save_file(tensors, path, metadata=metadata)
    tampered = path.read_bytes()
    with pytest.raises(ValueError, match=rf"{path}.*sae/W_dec"):
        train_sae(small_data(), SAE_CFG, train_cfg(path.parent))
    assert path.read_bytes() == tampered


def test_a_safetensors_file_that_is_not_a_training_checkpoint_is_refused(tmp_path):
    path = tmp_path / CHECKPOINT_FILENAME
    save_file({"W_dec": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match="not a sae_core training checkpoint"):
        train_sae(small_data(), SAE_CFG, train_cfg(tmp_path))


def test_nan_activations_are_refused_before_a_checkpoint_is_read_or_written(finished_run):
    path, _ = finished_run
    before = path.read_bytes()
    data = small_data()
    data[3, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        train_sae(data, SAE_CFG, train_cfg(path.parent))
    assert path.read_bytes() == before


def test_stale_temp_files_of_a_killed_write_are_removed_by_the_next_checkpoint(tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    checkpoint_dir.mkdir()
    stale = checkpoint_dir / f".{CHECKPOINT_FILENAME}.tmp-0123"
    stale.write_bytes(b"half a checkpoint")
    train_sae(small_data(), SAE_CFG, train_cfg(checkpoint_dir))
    assert sorted(path.name for path in checkpoint_dir.iterdir()) == [CHECKPOINT_FILENAME]


def test_a_full_disk_while_checkpointing_is_an_error_naming_the_checkpoint_and_leaves_no_staging(tmp_path, monkeypatch):
    import errno

    def disk_full(_descriptor):  # a filesystem that reports the full disk when the write is synced
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match=rf"the disk is full: no space left to write the checkpoint {tmp_path}") as raised:
        train_sae(small_data(), SAE_CFG, train_cfg(tmp_path))
    assert raised.value.errno == errno.ENOSPC and not list(tmp_path.iterdir())
