"""The storage root as a URI: a folder is its own working copy; an S3 prefix (moto's server on localhost) is
synced file by file, between caches that share nothing but the bucket."""

import errno

import fsspec
import pytest

import peerlens.working_copy
from peerlens.working_copy import CACHE_ENV, WorkingCopy, is_remote, storage_copy
from sae_core.staging import find_leftovers
from tests.full_disk import needs_dev_full, stage_on_a_full_disk
from tests.servers import s3_fsspec_config, s3_server

pytest.importorskip("moto.server", reason="needs moto[server] and s3fs (the test extra)")
pytest.importorskip("s3fs", reason="needs moto[server] and s3fs (the test extra)")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("moto")) as environment, pytest.MonkeyPatch.context() as patch:
        patch.setitem(fsspec.config.conf, "s3", s3_fsspec_config(environment))
        yield environment


def _copies(s3, tmp_path, prefix: str) -> tuple[WorkingCopy, WorkingCopy]:
    """Two machines' views of one prefix: their own caches, the same bucket."""
    return (WorkingCopy(f"s3://peerlens/{prefix}", cache=str(tmp_path / "a")),
            WorkingCopy(f"s3://peerlens/{prefix}", cache=str(tmp_path / "b")))


def test_a_folder_is_its_own_working_copy(tmp_path, monkeypatch):
    for uri in (str(tmp_path), f"file://{tmp_path}"):
        copy = WorkingCopy(uri)
        assert not copy.remote and copy.local == tmp_path
        (tmp_path / "x.txt").write_text("kept")
        assert copy.pull("x.txt") == tmp_path / "x.txt"
        copy.push("x.txt")  # nothing to send: the folder is the root
    monkeypatch.setenv("PEERLENS_HOME", str(tmp_path))
    assert storage_copy().local == tmp_path and storage_copy("other").local.name == "other"
    assert is_remote("s3://bucket/prefix") and is_remote("memory://x") and not is_remote("/tmp/x")


def test_what_one_cache_pushes_another_pulls_whole_and_in_its_latest_version(s3, tmp_path):
    a, b = _copies(s3, tmp_path, "versions")
    (a.local / "artifacts/sae").mkdir(parents=True)
    (a.local / "artifacts/sae/weights.bin").write_bytes(b"\x00" * 64)
    (a.local / "artifacts/sae/cfg.json").write_text('{"d_in": 4}')
    a.push("artifacts/sae")
    assert (b.pull("artifacts/sae") / "weights.bin").read_bytes() == b"\x00" * 64
    # A rewrite of the same size is another version: the store's ETag, not the size, decides.
    (a.local / "artifacts/sae/weights.bin").write_bytes(b"\x01" * 64)
    a.push("artifacts/sae")
    assert (b.pull("artifacts/sae") / "weights.bin").read_bytes() == b"\x01" * 64
    assert (b.local / "artifacts/sae/cfg.json").read_text() == '{"d_in": 4}'


def test_a_deletion_travels_but_a_cache_never_deletes_what_it_has_not_seen(s3, tmp_path):
    a, b = _copies(s3, tmp_path, "deletions")
    for name in ("one", "two"):
        (a.local / "tables").mkdir(parents=True, exist_ok=True)
        (a.local / f"tables/{name}.parquet").write_text(name)
    a.push("tables")
    b.pull("tables/one.parquet")  # b has seen only `one`
    (b.local / "tables/one.parquet").unlink()
    b.push("tables")
    assert a.fs.exists("peerlens/deletions/tables/two.parquet")
    assert not a.fs.exists("peerlens/deletions/tables/one.parquet")
    a.pull("tables")
    assert sorted(p.name for p in (a.local / "tables").iterdir()) == ["two.parquet"]


def test_staging_and_retired_files_are_never_sent(s3, tmp_path):
    a, _ = _copies(s3, tmp_path, "staging")
    store = a.local / "artifacts/llm_activations"
    (store / ".2017-05-18.tmp-1234").mkdir(parents=True)
    (store / ".2017-05-18.tmp-1234/shard_00000.safetensors").write_text("half")
    (store / ".table.99.abc.tmp").write_text("half")
    (store / "2017-05-18").mkdir()
    (store / "2017-05-18/store.json").write_text("{}")
    a.push("artifacts/llm_activations")
    assert a.fs.find("peerlens/staging") == ["peerlens/staging/artifacts/llm_activations/2017-05-18/store.json"]


def test_a_remote_root_is_cached_where_peerlens_cache_says(s3, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    copy = storage_copy("s3://peerlens/cached")
    assert copy.remote and copy.local == tmp_path / "cache"
    assert copy.pull("tables") == tmp_path / "cache" / "tables"  # nothing stored yet: nothing to bring


@needs_dev_full
def test_a_full_disk_while_pulling_is_an_error_naming_the_file_and_the_cached_copy_stays_whole(s3, tmp_path, monkeypatch):
    a, b = _copies(s3, tmp_path, "full-disk")
    (a.local / "tables").mkdir(parents=True)
    (a.local / "tables/t.parquet").write_text("v1")
    a.push("tables")
    b.pull("tables")
    (a.local / "tables/t.parquet").write_text("v2, longer")
    a.push("tables")
    stage_on_a_full_disk(monkeypatch, peerlens.working_copy)
    with pytest.raises(OSError, match="the disk is full: no space left to write the working copy's .*t.parquet") as raised:
        b.pull("tables")
    assert raised.value.errno == errno.ENOSPC
    assert (b.local / "tables/t.parquet").read_text() == "v1" and find_leftovers(b.local) == []
    monkeypatch.undo()  # space again
    b.pull("tables")
    assert (b.local / "tables/t.parquet").read_text() == "v2, longer"
