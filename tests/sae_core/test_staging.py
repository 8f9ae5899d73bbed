"""Specification of staging names and the cleanup after killed writers (sae_core.staging, `peerlens clean`)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peerlens.query.cli import main
from sae_core import staging
from sae_core.staging import (
    Action,
    Writer,
    carry_out,
    exchange,
    find_leftovers,
    plan_cleanup,
    publish_file,
    replace_folder,
    retired_sibling,
    staged_sibling,
)

DAY = 24 * 3600


def gone_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def write(path: Path, files: dict[str, str] | None = None, text: str = "half") -> Path:
    """A leftover file at `path`, or a folder holding `files` when they are given."""
    if files is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path
    for name, content in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
    return path


def named_by(path: Path, kind: str, pid: int, host: str = staging._HOST, token: str = "0123456789ab") -> Path:
    """`path`'s staged ("tmp") or retired ("old") sibling as the writer `pid` on `host` names it."""
    return path.with_name(f".{path.name}.{kind}-{host}-{pid}-{token}")


def age(path: Path, seconds: float) -> None:
    """Make everything at or under `path` last modified `seconds` ago."""
    then = time.time() - seconds
    for entry in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(entry, (then, then))


def actions(root: Path, **kwargs) -> dict[str, Action]:
    return {leftover.path.name: action for leftover, action in plan_cleanup(find_leftovers(root), **kwargs)}


def test_a_staged_and_a_retired_name_are_dot_siblings_that_name_their_target_and_this_process():
    target = Path("/store/tables/peer_scores.parquet")
    staged, retired = staged_sibling(target), retired_sibling(target)
    assert staged.parent == retired.parent == target.parent
    assert staged.name.startswith(".peer_scores.parquet.tmp-") and retired.name.startswith(".peer_scores.parquet.old-")
    assert f"-{os.getpid()}-" in staged.name and staged != staged_sibling(target)  # one name per write


def can_exchange(folder: Path) -> bool:
    a, b = folder / "probe-a", folder / "probe-b"
    a.mkdir(), b.mkdir()
    try:
        return exchange(a, b)
    finally:
        a.rmdir(), b.rmdir()


def test_a_reader_finds_a_whole_folder_at_every_step_of_a_replace(tmp_path, monkeypatch):
    if not can_exchange(tmp_path):
        pytest.skip("this OS or filesystem cannot exchange two paths (renameat2 RENAME_EXCHANGE)")
    folder = write(tmp_path / "release", {"release.json": "old"})
    staged = write(staged_sibling(folder), {"release.json": "new"})
    seen = []

    def watched(step):
        def around(*args, **kwargs):
            seen.append((folder / "release.json").read_text())  # FileNotFoundError when the folder is missing
            result = step(*args, **kwargs)
            seen.append((folder / "release.json").read_text())
            return result
        return around

    with monkeypatch.context() as patch:
        for name in ("rename", "replace"):
            patch.setattr(staging.os, name, watched(getattr(os, name)))
        patch.setattr(staging.shutil, "rmtree", watched(shutil.rmtree))
        replace_folder(staged, folder)
    assert seen and set(seen) == {"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]


@pytest.mark.parametrize("os_can_exchange", [True, False])
def test_a_replace_leaves_the_new_folder_and_nothing_beside_it(tmp_path, monkeypatch, os_can_exchange):
    if not os_can_exchange:
        monkeypatch.setattr(staging, "_renameat2", None)
    folder = tmp_path / "store"
    for version in ("first", "second"):  # into an empty name, then over a folder
        replace_folder(write(staged_sibling(folder), {"store.json": version}), folder)
        assert (folder / "store.json").read_text() == version
        assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def synced_and_renamed(monkeypatch) -> list[tuple[str, str]]:
    """Record every fsync (by the path it names) and every rename, in order."""
    events = []
    fsync, replace, rename = os.fsync, os.replace, os.rename

    def recorded_fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        return fsync(descriptor)

    def recorded(step, name):
        return lambda source, target: (events.append((name, f"{source} -> {target}")), step(source, target))[1]

    monkeypatch.setattr(staging.os, "fsync", recorded_fsync)
    monkeypatch.setattr(staging.os, "replace", recorded(replace, "rename"))
    monkeypatch.setattr(staging.os, "rename", recorded(rename, "rename"))
    return events


def test_a_published_file_is_on_disk_before_its_rename_and_the_rename_before_it_returns(tmp_path, monkeypatch):
    path = tmp_path / "scores.parquet"
    staged = write(staged_sibling(path), text="new")
    events = synced_and_renamed(monkeypatch)
    publish_file(staged, path)
    assert events == [("fsync", str(staged)), ("rename", f"{staged} -> {path}"), ("fsync", str(tmp_path))]


def test_every_file_of_a_replacing_folder_is_on_disk_before_it_is_published(tmp_path, monkeypatch):
    folder = write(tmp_path / "release", {"release.json": "old"})
    staged = write(staged_sibling(folder), {"release.json": "new", "sae_00/cfg.json": "{}"})
    events = synced_and_renamed(monkeypatch)
    replace_folder(staged, folder)
    synced_first = {path for kind, path in events[:4] if kind == "fsync"}
    assert synced_first == {str(staged), str(staged / "release.json"), str(staged / "sae_00"), str(staged / "sae_00/cfg.json")}
    assert ("fsync", str(tmp_path)) in events and (folder / "release.json").read_text() == "new"


def test_an_exchange_with_a_missing_path_changes_nothing(tmp_path):
    present = write(tmp_path / "present", {"x": "kept"})
    assert not exchange(present, tmp_path / "missing") and not exchange(tmp_path / "missing", present)
    assert (present / "x").read_text() == "kept" and not (tmp_path / "missing").exists()


def test_a_leftover_says_what_it_was_for_its_size_and_whether_its_writer_is_running(tmp_path):
    folder = write(staged_sibling(tmp_path / "2017-05-18"), {"shard_00000.safetensors": "x" * 100, "sub/a": "yz"})
    age(folder, 3600)
    [leftover] = find_leftovers(tmp_path)
    assert leftover.path == folder and leftover.target == tmp_path / "2017-05-18" and not leftover.retired
    assert leftover.writer is Writer.RUNNING and leftover.bytes == 102
    assert 3590 < leftover.idle_seconds < 3700


def test_what_a_gone_writer_left_is_removed_at_once_and_nothing_else_is_touched(tmp_path):
    table = write(tmp_path / "tables" / "scores.parquet", text="published")
    write(named_by(table, "tmp", gone_pid()))
    store = write(tmp_path / "artifacts" / "2017-05-18", {"store.json": "{}"})
    write(named_by(store, "tmp", gone_pid()), {"shard_00000.safetensors": "half"})
    write(named_by(store, "old", gone_pid()), {"store.json": "{} old"})
    # Dot-names that are not a writer's (the sync database, a tool's folder) and content are not leftovers.
    write(tmp_path / ".peerlens-sync.sqlite", text="db")
    write(tmp_path / "artifacts" / ".cache", {"x": "y"})

    plan = plan_cleanup(find_leftovers(tmp_path))
    assert [(leftover.writer, action) for leftover, action in plan] == [(Writer.GONE, Action.REMOVE)] * 3
    carry_out(plan)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        ".peerlens-sync.sqlite", "artifacts/.cache/x", "artifacts/2017-05-18/store.json", "tables/scores.parquet",
    ]
    assert table.read_text() == "published" and find_leftovers(tmp_path) == []


def test_a_running_writer_s_staging_is_kept_however_old_only_while_it_is_young(tmp_path):
    mine = write(staged_sibling(tmp_path / "scores.parquet"))
    elsewhere = write(named_by(tmp_path / "other.parquet", "tmp", 1234, host="0badc0de"))
    legacy = write(tmp_path / ".old.parquet.1234.0123456789ab.tmp")
    assert {leftover.writer for leftover in find_leftovers(tmp_path)} == {Writer.RUNNING, Writer.ELSEWHERE, Writer.UNKNOWN}
    assert set(actions(tmp_path).values()) == {Action.KEEP}
    for path in (mine, elsewhere, legacy):
        age(path, 2 * DAY)
    assert actions(tmp_path, stale_after_seconds=3 * DAY) == dict.fromkeys([legacy.name, mine.name, elsewhere.name], Action.KEEP)
    assert set(actions(tmp_path).values()) == {Action.REMOVE}  # a day untouched: no write runs that long idle


def test_names_written_before_writers_were_named_are_found_with_an_unknown_writer(tmp_path):
    for name in (".store.tmp-0123456789abcdef0123456789abcdef", ".sae.tmp-k2_x9q1m", ".release.old-0123456789abcdef",
                 ".scores.parquet.77.0123456789ab.tmp", ".scores.parquet.77.download"):
        write(tmp_path / name)
    found = find_leftovers(tmp_path)
    assert len(found) == 5 and {leftover.writer for leftover in found} == {Writer.UNKNOWN}
    assert {leftover.target.name for leftover in found} == {"store", "sae", "release", "scores.parquet"}


def test_a_folder_left_missing_between_the_two_renames_of_a_replace_is_restored_from_its_newest_retired_version(tmp_path):
    release = tmp_path / "releases" / "abc"
    older = write(named_by(release, "old", gone_pid()), {"release.json": "v1"})
    newer = write(named_by(release, "old", gone_pid(), token="ba9876543210"), {"release.json": "v2"})
    age(older, 2 * 3600)
    age(newer, 3600)
    staged_new = write(named_by(release, "tmp", gone_pid()), {"release.json": "v3 half"})

    plan = plan_cleanup(find_leftovers(tmp_path))
    assert {leftover.path: action for leftover, action in plan} == {
        older: Action.REMOVE, newer: Action.RESTORE, staged_new: Action.REMOVE,
    }
    carry_out(plan)
    assert (release / "release.json").read_text() == "v2" and find_leftovers(tmp_path) == []


def test_a_retired_folder_is_not_restored_over_one_its_writer_published_or_while_its_writer_runs(tmp_path):
    published = write(tmp_path / "abc", {"release.json": "new"})
    write(named_by(published, "old", gone_pid()), {"release.json": "old"})
    missing = tmp_path / "def"
    write(retired_sibling(missing), {"release.json": "old"})  # this process is its writer: between its renames
    plan = plan_cleanup(find_leftovers(tmp_path))
    assert {(leftover.target.name, action) for leftover, action in plan} == {("abc", Action.REMOVE), ("def", Action.KEEP)}
    carry_out(plan)
    assert (published / "release.json").read_text() == "new" and not missing.exists()


# --- the command ------------------------------------------------------------------------------------------


def test_peerlens_clean_says_what_it_would_do_does_it_and_then_finds_nothing(tmp_path, capsys):
    table = write(tmp_path / "tables" / "scores.parquet", text="published")
    leftover = write(named_by(table, "tmp", gone_pid()), text="x" * 2**20)
    kept = write(staged_sibling(tmp_path / "tables" / "live.parquet"))

    assert main(["clean", "--storage", str(tmp_path), "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"Leftovers of writers under {tmp_path}:")
    assert f"keep    staged  0.0 MiB  0.0 h  running  tables/{kept.name}" in shown
    assert f"remove  staged  1.0 MiB  0.0 h  gone     tables/{leftover.name}" in shown
    assert "Would remove 1 (1.0 MiB), would restore 0 folder(s) to their names; kept 1" in shown
    assert leftover.exists()

    assert main(["clean", "--storage", str(tmp_path)]) == 0
    assert "Removed 1 (1.0 MiB), restored 0" in capsys.readouterr().out
    assert not leftover.exists() and kept.exists() and table.read_text() == "published"
    kept.unlink()
    assert main(["clean", "--storage", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"No leftovers of killed writers under {tmp_path}.\n"


@pytest.mark.parametrize(
    "arguments, message",
    [(["--stale-after-hours", "0"], "--stale-after-hours must be positive, not 0.0"), ([], "no storage root at")],
)
def test_peerlens_clean_refuses_a_missing_root_and_a_non_positive_age(tmp_path, capsys, arguments, message):
    assert main(["clean", "--storage", str(tmp_path / "nowhere"), *arguments]) == 1
    assert message in capsys.readouterr().err
