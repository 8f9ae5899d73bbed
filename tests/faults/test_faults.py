"""Faults: a run killed with SIGKILL in the middle of each heavy step, and a disk that fills during a write.

After each, what was stored before is where readers look, whole (byte for byte), and nothing half-written is
visible there: a killed writer's leftovers lie only under dot-names (its staging), which readers never open.
A run again then succeeds and stores the right result. A full disk is an error that names what was being
written and says the disk is full. The killed runs are child processes (`tests.faults.killed_run`) stopped
at a known point and killed there; everything runs on tiny models on the CPU.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import SafetensorError

import peerlens.layout
import sae_core.activation_store
import sae_core.io
from assets.activations import DayNotCaptured, open_day_store
from peerlens.layout import read_table, table_path
from resources import ArtifactStorage
from sae_core.activation_store import ActivationStore
from sae_core.features import encode_tokens
from sae_core.io import load_sae
from sae_core.release import load_release
from sae_core.staging import Action, Writer, carry_out, find_leftovers, plan_cleanup
from tests.assets.test_group_saes_config import tiny_store
from tests.full_disk import needs_dev_full, stage_on_a_full_disk
from tests.faults.killed_run import (
    AFTER,
    BEFORE,
    CORPUS,
    DAY,
    capture,
    day_store_folder,
    encode,
    kill_at,
    prepare_encoding,
    release_folder,
    scores,
    train_release,
    write_scores,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

FULL_DISK = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
"""What safetensors raises when the disk fills (its own words; it names no file)."""


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by its path relative to it, with its bytes."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def hidden(folder: Path) -> list[Path]:
    """The entries of `folder` under a dot-name: a writer's staging or a retired folder, which readers ignore."""
    return [path for path in folder.iterdir() if path.name.startswith(".")]


def clean_after_the_kill(root: Path) -> None:
    """`peerlens clean`'s steps on `root` after a kill: every leftover is the killed writer's, known gone, and is
    removed; no published file changes, and no leftover remains."""
    published = {path: path.read_bytes() for path in root.rglob("*") if path.is_file() and "/." not in str(path)}
    plan = plan_cleanup(find_leftovers(root))
    assert plan and all(leftover.writer is Writer.GONE and action is Action.REMOVE for leftover, action in plan), plan
    carry_out(plan)
    assert find_leftovers(root) == []
    assert {path: path.read_bytes() for path in root.rglob("*") if path.is_file()} == published


def error_text(result, node: str) -> str:
    """The failure of `node` in a materialization, with every error it was caused by."""
    error, messages = result.failure_data_for_node(node).error, []
    while error is not None:
        messages.append(error.message)
        error = error.cause or error.context
    return "\n".join(messages)


def full_disk_after_part_of_the_file(tensors, filename, *args, **kwargs):
    """safetensors' save_file on a disk that fills: part of the file is written, then FULL_DISK."""
    Path(filename).write_bytes(b"\0" * 64)
    raise FULL_DISK


# --- SIGKILL ---------------------------------------------------------------------------------------


def test_a_capture_killed_after_its_first_shard_keeps_the_days_store_whole_and_a_new_run_captures_the_day(tmp_path):
    root = tmp_path / "home"
    assert capture(root, BEFORE).success
    day = day_store_folder(root)
    stored = files(day)

    kill_at("capture", root)

    assert files(day) == stored  # the day's store, byte for byte
    staged = hidden(day.parent)
    assert sorted(path.name for path in day.parent.iterdir() if path not in staged) == [DAY]
    # The kill landed mid-write: a store with a shard and no manifest, under its writer's dot-name only.
    assert any((path / "shard_00000.safetensors").exists() and not (path / "store.json").exists() for path in staged)
    artifacts = ArtifactStorage(root=str(root))
    assert open_day_store(artifacts, DAY, BEFORE).n_tokens == 8
    # Downstream, the day is named as not captured for its edited texts, never read half new.
    with pytest.raises(DayNotCaptured, match=f"{DAY} \\(holds other texts"):
        open_day_store(artifacts, DAY, AFTER)
    clean_after_the_kill(root)

    assert capture(root, AFTER).success
    again = open_day_store(artifacts, DAY, AFTER)
    assert capture(tmp_path / "never-killed", AFTER).success
    reference = ActivationStore(day_store_folder(tmp_path / "never-killed"))
    assert again.n_tokens == reference.n_tokens == 14
    pd.testing.assert_frame_equal(again.index, reference.index)
    for layer in range(again.n_layers):
        assert torch.equal(again.layer(layer), reference.layer(layer))


def test_sae_training_killed_during_its_second_sae_keeps_the_release_whole_and_a_retrain_succeeds(tmp_path):
    root = tmp_path / "home"
    tiny_store(root / CORPUS)
    first = train_release(root)
    folder = release_folder(root, first)
    stored = files(folder)

    kill_at("training", root)

    assert files(folder) == stored
    assert load_release(folder).version == first.notes["release_version"]
    for sae in first.saes:
        assert load_sae(root / sae.path).cfg.d_sae == 16
    staged = hidden(folder.parent)
    assert sorted(path.name for path in folder.parent.iterdir() if path not in staged) == [folder.name]
    # The kill landed mid-training: the first SAE saved in the staging release, no release.json beside it.
    assert any((path / "sae_00_layers_0-0" / "cfg.json").exists() and not (path / "release.json").exists() for path in staged)
    clean_after_the_kill(root)

    again = train_release(root, retrain=True)
    assert again.notes["release"] == first.notes["release"]
    assert again.notes["release_version"] != first.notes["release_version"]
    assert load_release(folder).version == again.notes["release_version"]
    for old, new in zip(first.saes, again.saes):  # the same recipe on the same rows: the same SAEs
        assert torch.equal(load_sae(root / new.path).W_enc, load_sae(root / old.path).W_enc)


def test_a_retrain_killed_while_deleting_the_release_it_replaces_leaves_a_whole_release_in_place(tmp_path):
    """Killed inside `replace_folder` once the old release is renamed aside: the new one is already in place
    (it used to be moved in only after the old one was deleted, so this kill left no release at all)."""
    root = tmp_path / "home"
    tiny_store(root / CORPUS)
    first = train_release(root)
    folder = release_folder(root, first)

    kill_at("publishing", root)

    release = load_release(folder)
    assert release is not None and release.version != first.notes["release_version"]
    assert {path.name for path in folder.iterdir()} == {"release.json", "sae_00_layers_0-0", "sae_01_layers_1-1"}
    for sae in release.trained.saes:
        assert load_sae(root / sae.path).cfg.d_sae == 16
    assert [path.name.split(".old-")[0] for path in hidden(folder.parent)] == [f".{folder.name}"]  # the retired one
    clean_after_the_kill(root)

    again = train_release(root)  # the release in place is whole: it is reused, not trained again
    assert again.notes["release_version"] == release.version


def test_feature_encoding_killed_after_its_first_batch_keeps_the_days_features_whole_and_a_new_run_encodes_the_day(
    tmp_path,
):
    root = tmp_path / "home"
    release = prepare_encoding(root)
    assert encode(root, "mean").success
    tables = [root / "tables" / "company_features", root / "tables" / "latent_top_tokens"]
    stored = {table: files(table) for table in tables}

    kill_at("encoding", root)

    for table in tables:
        assert files(table) == stored[table]
        assert [path.name for path in table.iterdir()] == [f"{DAY}.parquet"]

    assert encode(root, "max").success
    features = pd.read_parquet(tables[0] / f"{DAY}.parquet")
    # Each text's value on each latent is the largest of its usable tokens' SAE codes, from the store directly.
    store, sae = ActivationStore(day_store_folder(root)), load_sae(root / release.for_layer(1).path_for(1))
    usable = release.massive_rule.usable_mask(store.token_norms())
    documents = store.index.document[usable.numpy()].to_numpy()
    codes = encode_tokens(sae, store.layer(1)[usable])
    dense = torch.zeros(len(documents), sae.cfg.d_sae).scatter_(1, codes.top_indices, codes.top_acts).numpy()
    for text_id, mine in features.groupby("text_id"):
        expected = dense[documents == text_id].max(axis=0)
        assert set(mine.latent) == set(np.flatnonzero(expected))
        np.testing.assert_allclose(mine.value, expected[mine.latent], rtol=1e-5)
    assert features.text_id.nunique() == 10


def test_a_table_write_killed_half_way_keeps_the_stored_table_whole_and_a_new_run_writes_it(tmp_path):
    root = tmp_path / "home"
    assert write_scores(root, rows=10, seed=0).success
    path = table_path(root, "peer_scores")
    stored = path.read_bytes()

    kill_at("table_write", root)

    assert path.read_bytes() == stored
    pd.testing.assert_frame_equal(read_table(root, "peer_scores"), scores(10, 0))
    # The half-written file exists, but only as the killed writer's staging file, which no reader opens.
    staged = hidden(path.parent)
    assert sorted(p.name for p in path.parent.iterdir() if p not in staged) == [path.name]
    assert len(staged) == 1 and staged[0].name.startswith(f".{path.name}.tmp-")
    with pytest.raises(Exception):
        pd.read_parquet(staged[0])
    clean_after_the_kill(root)

    assert write_scores(root, rows=20_000, seed=1).success
    pd.testing.assert_frame_equal(read_table(root, "peer_scores"), scores(20_000, 1))


# --- a full disk -----------------------------------------------------------------------------------


@needs_dev_full
def test_a_full_disk_during_a_table_write_is_an_error_naming_the_table_and_the_stored_table_stays_whole(
    tmp_path, monkeypatch
):
    """The IO manager's parquet write goes to /dev/full: pyarrow's own ENOSPC, which names no file."""
    root = tmp_path / "home"
    assert write_scores(root, rows=10, seed=0).success
    path = table_path(root, "peer_scores")
    stored = path.read_bytes()
    stage_on_a_full_disk(monkeypatch, peerlens.layout)
    result = write_scores(root, rows=20_000, seed=1, raise_on_error=False)

    assert not result.success
    message = error_text(result, "peer_scores")
    assert f"the disk is full: no space left to write {path}" in message
    assert path.read_bytes() == stored and list(path.parent.iterdir()) == [path]

    monkeypatch.undo()  # space again
    assert write_scores(root, rows=20_000, seed=1).success
    pd.testing.assert_frame_equal(read_table(root, "peer_scores"), scores(20_000, 1))


def test_a_full_disk_while_saving_an_sae_is_an_error_naming_the_sae_and_the_release_stays_whole(tmp_path, monkeypatch):
    root = tmp_path / "home"
    tiny_store(root / CORPUS)
    first = train_release(root)
    folder = release_folder(root, first)
    stored = files(folder)

    monkeypatch.setattr(sae_core.io, "save_file", full_disk_after_part_of_the_file)
    with pytest.raises(OSError, match=r"the disk is full: no space left to write the SAE \S*/sae_00_layers_0-0 ") as raised:
        train_release(root, retrain=True)

    assert raised.value.errno == errno.ENOSPC and str(folder.parent) in str(raised.value)
    assert files(folder) == stored and load_release(folder).version == first.notes["release_version"]
    assert list(folder.parent.iterdir()) == [folder]  # the staging release and its partial file are gone

    monkeypatch.undo()
    again = train_release(root, retrain=True)
    assert load_release(folder).version == again.notes["release_version"] != first.notes["release_version"]


def test_a_full_disk_during_a_capture_is_an_error_naming_the_days_store_and_the_stored_one_stays_whole(
    tmp_path, monkeypatch
):
    root = tmp_path / "home"
    assert capture(root, BEFORE).success
    day = day_store_folder(root)
    stored = files(day)

    monkeypatch.setattr(sae_core.activation_store, "save_file", full_disk_after_part_of_the_file)
    result = capture(root, AFTER, raise_on_error=False)

    assert not result.success
    message = error_text(result, "llm_activations")
    assert f"the disk is full: no space left to write the activation store {day} (shard_00000.safetensors)" in message
    assert files(day) == stored and list(day.parent.iterdir()) == [day]  # the staging store is gone

    monkeypatch.undo()
    assert capture(root, AFTER).success
    assert open_day_store(ArtifactStorage(root=str(root)), DAY, AFTER).n_tokens == 14
