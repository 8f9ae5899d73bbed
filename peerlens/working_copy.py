"""The storage root as a URI, and this machine's working copy of it.

PeerLens's storage root is a folder (`.peerlens`, `/mnt/peerlens`, `file:///mnt/peerlens`) or an object-store
prefix (`s3://bucket/peerlens`, any fsspec URL). Code reads and writes plain local files in either case:

    a folder      the working copy is the folder itself; `pull` and `push` do nothing
    an object     the working copy is a local cache ($PEERLENS_CACHE, else ~/.cache/peerlens/<hash of the URI>);
    store URI     `pull(path)` brings down the files under `path` that the store holds in another version than
                  the cache, `push(path)` sends up the files under `path` written since they were last synced
                  and deletes from the store what this cache synced and has since deleted

A file is synced whole: every object the store holds was complete when it was uploaded (an upload is one
PUT per object), so a reader never sees half a file; a folder pushed while a reader pulls it can be seen
half old, half new, which is why assets push their artifacts before their value names them
(resources.storage). Versions are the store's (an S3 ETag) against the local (size, mtime) each file had
when synced, kept in `<cache>/.peerlens-sync.sqlite` (SQLite, so the processes of one machine share a cache).
Credentials and the endpoint come from fsspec's configuration, e.g. AWS_* and FSSPEC_S3_ENDPOINT_URL.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from contextlib import closing
from functools import cache
from pathlib import Path

import fsspec

from sae_core.full_disk import naming_a_full_disk
from sae_core.staging import publish_file, staged_sibling

HOME_ENV = "PEERLENS_HOME"
CACHE_ENV = "PEERLENS_CACHE"
DEFAULT_HOME = ".peerlens"
SYNC_DB = ".peerlens-sync.sqlite"


def is_remote(uri: str) -> bool:
    """True for a URL of a filesystem other than the local one (s3://, gs://, memory://...)."""
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    return protocol not in ("file", "local")


class WorkingCopy:
    """The storage root `uri` and where this machine reads and writes it (module docstring)."""

    def __init__(self, uri: str, cache: str | None = None):
        """`cache`: the working copy of a remote `uri` (default ~/.cache/peerlens/<hash of the URI>)."""
        self.uri = uri
        self.remote = is_remote(uri)
        if not self.remote:
            self.local = Path(uri.removeprefix("file://")).resolve()
            return
        self.fs, self.base = fsspec.core.url_to_fs(uri)
        self.base = self.base.rstrip("/")
        default_cache = Path.home() / ".cache" / "peerlens" / hashlib.sha256(uri.encode()).hexdigest()[:16]
        self.local = Path(cache or default_cache).resolve()

    def __repr__(self) -> str:
        return f"WorkingCopy({self.uri!r} at {self.local})" if self.remote else f"WorkingCopy({self.uri!r})"

    def _db(self) -> sqlite3.Connection:
        self.local.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.local / SYNC_DB, timeout=60)
        db.execute("CREATE TABLE IF NOT EXISTS synced (path TEXT PRIMARY KEY, remote TEXT, size INT, mtime_ns INT)")
        return db

    def _remote_files(self, path: str) -> dict[str, str]:
        """path under the root → the store's version of it, for every object under `path` (a file or folder)."""
        target = f"{self.base}/{path}".rstrip("/")
        self.fs.invalidate_cache(target)  # another process may have written since this one listed
        if not self.fs.exists(target):
            return {}
        found = self.fs.find(target, detail=True) if self.fs.isdir(target) else {target: self.fs.info(target)}
        return {name[len(self.base) + 1 :]: _version(info) for name, info in found.items() if info.get("type") != "directory"}

    def pull(self, path: str) -> Path:
        """The local copy of `path` (relative to the root), with every object under it brought up to date."""
        local = self.local / path
        if not self.remote:
            return local
        remote = self._remote_files(path)
        with closing(self._db()) as db, db:
            synced = dict(db.execute(f"SELECT path, remote FROM synced WHERE {_UNDER}", _under(path)))
            for name, version in sorted(remote.items()):
                target = self.local / name
                if synced.get(name) == version and target.exists():
                    continue
                _download(self.fs, f"{self.base}/{name}", target)
                stat = target.stat()
                db.execute("REPLACE INTO synced VALUES (?, ?, ?, ?)", (name, version, stat.st_size, stat.st_mtime_ns))
            for name in synced.keys() - remote.keys():  # deleted from the store since this cache synced it
                (self.local / name).unlink(missing_ok=True)
                db.execute("DELETE FROM synced WHERE path = ?", (name,))
        return local

    def push(self, path: str) -> None:
        """Send up what changed under `path` since it was last synced; delete from the store what this cache
        synced and no longer holds (never a file it has not seen)."""
        if not self.remote:
            return
        local = self.local / path
        files = [local] if local.is_file() else [f for f in local.rglob("*") if f.is_file() and not _hidden(f, self.local)]
        with closing(self._db()) as db, db:
            known = {row[0]: row[1:] for row in db.execute(f"SELECT path, size, mtime_ns FROM synced WHERE {_UNDER}", _under(path))}
            for file in files:
                name = file.relative_to(self.local).as_posix()
                stat = file.stat()
                if known.pop(name, None) == (stat.st_size, stat.st_mtime_ns):
                    continue
                remote = f"{self.base}/{name}"
                self.fs.put_file(str(file), remote)
                version = _version(self.fs.info(remote, refresh=True))
                db.execute("REPLACE INTO synced VALUES (?, ?, ?, ?)", (name, version, stat.st_size, stat.st_mtime_ns))
            for name in known:  # synced once, deleted here since
                self.fs.rm_file(f"{self.base}/{name}")
                db.execute("DELETE FROM synced WHERE path = ?", (name,))


_UNDER = "path = ? OR substr(path, 1, ?) = ?"
"""The synced rows of a path and of everything under it (no LIKE: `_` and `%` are common in file names)."""


def _under(path: str) -> tuple:
    return path, len(path) + 1, f"{path}/"


def _version(info: dict) -> str:
    """An object's version as the store reports it: S3's ETag, else its size and modification time."""
    tag = info.get("ETag") or info.get("etag")
    return str(tag) if tag else f"{info.get('size')}:{info.get('LastModified') or info.get('mtime') or info.get('created')}"


def _download(fs, remote: str, target: Path) -> None:
    """`remote` into `target`, through a staging name, so a reader of the cache never sees half of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staged_sibling(target)
    try:
        with naming_a_full_disk(f"the working copy's {target} (from {remote})"):
            fs.get_file(remote, str(staging))
            publish_file(staging, target)
    finally:
        staging.unlink(missing_ok=True)


def _hidden(file: Path, root: Path) -> bool:
    """Under a dot-name below `root`: a writer's staging file or folder or a retired folder (`sae_core.staging`),
    or the sync database; never content."""
    return any(part.startswith(".") for part in file.relative_to(root).parts)


_remote_copy = cache(WorkingCopy)
"""One WorkingCopy per remote URI and cache folder in a process (its filesystem and listings are reused)."""


def root_uri(storage: str | os.PathLike | None = None) -> str:
    """The storage root's URI: `storage` if given, else $PEERLENS_HOME, else `.peerlens`."""
    return str(storage or os.environ.get(HOME_ENV) or DEFAULT_HOME)


def storage_copy(storage: str | os.PathLike | None = None) -> WorkingCopy:
    """The working copy of the storage root `root_uri(storage)`; a remote one is opened once per URI and cache."""
    uri = root_uri(storage)
    return _remote_copy(uri, os.environ.get(CACHE_ENV)) if is_remote(uri) else WorkingCopy(uri)
