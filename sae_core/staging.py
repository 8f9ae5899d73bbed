"""Staging names: where every writer puts what it writes until a rename publishes it, and what a killed
writer leaves behind.

No writer writes where readers look. It writes a file or folder under a sibling dot-name and renames it into
place (one atomic rename); a folder it replaces is exchanged with the new one, or renamed aside first where
the OS cannot exchange, and deleted once the new one is in place (`replace_folder`):

    .<name>.tmp-<host>-<pid>-<token>   staged: being written, published as <name>
    .<name>.old-<host>-<pid>-<token>   retired: the version of the folder <name> that a writer replaced

<host> is the first 8 hex digits of the SHA-256 of the writer's host name and <pid> its process id, so that a
cleaner on the same host can tell a writer that is gone (no process has that id) from one still at work;
<token> (12 hex digits) keeps the writes of one process apart. Readers never open a dot-name.

A writer killed mid-write leaves its staging behind, and one killed between replace_folder's two renames
leaves <name> missing, its last version whole under the retired name. `find_leftovers(root)` finds both under
a storage root; `plan_cleanup` removes what no writer can still need and puts such a retired folder back.
Names written before this scheme (`.<name>.tmp-<hex>`, `.<name>.old-<hex>`, `.<name>.<pid>.<hex>.tmp`,
`.<name>.<pid>.download`) are found too; their writer is unknown, so only their age lets them go.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

STALE_AFTER_SECONDS = 24 * 3600
"""A leftover whose writer cannot be asked (another host, an old name) is taken as abandoned after a day
untouched: no PeerLens write runs that long without touching what it writes."""

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # Linux, glibc >= 2.28
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_CANNOT_EXCHANGE = {errno.ENOENT, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV}
"""renameat2's errors that mean "cannot exchange here" (a path missing, a kernel or filesystem without it)."""

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_NAMED = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{12}")
_LEGACY = (
    re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-[a-z0-9_]+"),
    re.compile(r"\.(?P<name>.+)\.\d+\.[0-9a-f]{12}\.(?P<kind>tmp)"),
    re.compile(r"\.(?P<name>.+)\.\d+\.(?P<kind>download)"),
)


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}")


def staged_sibling(path: str | os.PathLike) -> Path:
    """Where this process stages a new `path`: a sibling (so the rename is atomic) no other writer chooses."""
    return _sibling(Path(path), "tmp")


def retired_sibling(path: str | os.PathLike) -> Path:
    """Where this process moves the folder `path` aside while it replaces it."""
    return _sibling(Path(path), "old")


def publish_file(staged: Path, path: Path) -> None:
    """Rename the fully written file `staged` onto `path`, durably: its bytes reach the disk before the rename,
    and the rename before this returns (fsync of the file, then of the folder). Without the first, a power cut
    after the rename can leave `path` empty on filesystems that delay allocation."""
    _sync(staged)
    os.replace(staged, path)
    _sync(path.parent)


def replace_folder(staged: Path, folder: Path, attempts: int = 5) -> None:
    """Move the fully written `staged` folder to `folder`, replacing any previous version.

    Where the OS can (Linux's renameat2), the two are exchanged in one step, so a reader of `folder` finds a
    whole version at every instant; the old one, now at the staged name, is renamed to a retired name and
    deleted. Elsewhere os.replace cannot overwrite a non-empty directory, so the old one is first renamed
    aside and deleted only once the new one is in place: `folder` is then missing for the instant between
    the two renames (a writer killed there leaves its old version whole under the retired name, which
    `plan_cleanup` puts back). Another writer may put its own folder there between the two renames; then
    that one is retired too and the move retried: the last writer wins whole, and neither sees an error or
    half of the other's folder. Every file of `staged` is on disk before it is published (as `publish_file`).
    """
    for entry in sorted(staged.rglob("*"), key=lambda entry: -len(entry.parts)):  # files, then their folders
        _sync(entry)
    _sync(staged)
    if exchange(staged, folder):
        retired = retired_sibling(folder)
        os.rename(staged, retired)  # the old version, under the name that says what it is
        _sync(folder.parent)
        shutil.rmtree(retired, ignore_errors=True)
        return
    for _ in range(attempts):
        retired = retired_sibling(folder)
        try:
            os.replace(folder, retired)
        except FileNotFoundError:  # nothing there yet, or another writer retired it first
            pass
        try:
            os.replace(staged, folder)
            moved = True
        except OSError:  # another writer's folder arrived in between: retire it and try again
            moved = False
        if moved:
            _sync(folder.parent)
        shutil.rmtree(retired, ignore_errors=True)
        if moved:
            return
    raise OSError(f"could not move {staged} to {folder}: other writers kept replacing it")


def _sync(path: Path) -> None:
    """fsync the file or folder at `path` (a folder's fsync makes the renames and creations in it durable)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def exchange(a: Path, b: Path) -> bool:
    """Swap the entries at `a` and `b` in one atomic step (renameat2 with RENAME_EXCHANGE): a reader of either
    path finds one of the two at every instant. False, with nothing changed, where either is missing or the
    OS or filesystem cannot exchange."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in _CANNOT_EXCHANGE:
        return False
    raise OSError(error, os.strerror(error), str(a), None, str(b))


class Writer(Enum):
    GONE = "gone"
    """On this host, and no process has its id: the write can never finish."""
    RUNNING = "running"
    """On this host, and a process has its id (its own, or one that took a freed id)."""
    ELSEWHERE = "on another host"
    UNKNOWN = "unknown"
    """A name from before writers were named in it."""


@dataclass(frozen=True)
class Leftover:
    """A staged or retired file or folder under a storage root."""

    path: Path
    target: Path
    """What it was written or retired for: the sibling without the dot-name."""
    retired: bool
    """A replaced folder's last version, rather than a write that did not finish."""
    writer: Writer
    bytes: int
    idle_seconds: float
    """Since anything under it was last modified."""


def _writer(match: re.Match) -> Writer:
    if "host" not in match.groupdict():
        return Writer.UNKNOWN
    if match["host"] != _HOST:
        return Writer.ELSEWHERE
    try:
        os.kill(int(match["pid"]), 0)
    except (ProcessLookupError, OverflowError):  # no such process (an id past the largest cannot be one)
        return Writer.GONE
    except PermissionError:  # another user's process
        pass
    return Writer.RUNNING


def _size_and_last_change(path: Path) -> tuple[int, float]:
    """Bytes of the files at or under `path`, and the newest modification time there."""
    entries = [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else ())]
    stats = [(entry.lstat(), entry.is_dir() and not entry.is_symlink()) for entry in entries]
    return sum(stat.st_size for stat, is_dir in stats if not is_dir), max(stat.st_mtime for stat, _ in stats)


def leftover_at(path: Path, now: float | None = None) -> Leftover | None:
    """`path` as a Leftover when its name is a staging or retired name, else None."""
    for pattern in (_NAMED, *_LEGACY):
        match = pattern.fullmatch(path.name)
        if match:
            size, changed = _size_and_last_change(path)
            return Leftover(
                path=path, target=path.with_name(match["name"]), retired=match["kind"] == "old",
                writer=_writer(match), bytes=size, idle_seconds=max(0.0, (now or time.time()) - changed),
            )
    return None


def find_leftovers(root: str | os.PathLike) -> list[Leftover]:
    """Every leftover under the folder `root` (not looking inside one), by path."""
    now, found = time.time(), []
    for folder, subfolders, files in os.walk(root):
        for name in sorted([*subfolders, *files]):
            try:
                leftover = leftover_at(Path(folder) / name, now) if name.startswith(".") else None
            except FileNotFoundError:  # a writer renamed or removed it meanwhile
                continue
            if leftover is not None:
                found.append(leftover)
                if name in subfolders:
                    subfolders.remove(name)
    return sorted(found, key=lambda leftover: str(leftover.path))


class Action(Enum):
    REMOVE = "remove"
    RESTORE = "restore"
    """A retired folder whose name is empty goes back under it."""
    KEEP = "keep"
    """Its writer may still be at work."""


def plan_cleanup(leftovers: list[Leftover], stale_after_seconds: float = STALE_AFTER_SECONDS) -> list[tuple[Leftover, Action]]:
    """What to do with each leftover: a writer that is gone, or one untouched for `stale_after_seconds`, can no
    longer need it; of the retired versions of a folder that is missing, the newest is restored."""
    plan, restored = [], set()
    by_recency = sorted(leftovers, key=lambda leftover: leftover.idle_seconds)
    for leftover in by_recency:
        if leftover.writer is not Writer.GONE and leftover.idle_seconds < stale_after_seconds:
            action = Action.KEEP
        elif leftover.retired and not leftover.target.exists() and leftover.target not in restored:
            action = Action.RESTORE
            restored.add(leftover.target)
        else:
            action = Action.REMOVE
        plan.append((leftover, action))
    return sorted(plan, key=lambda step: str(step[0].path))


def clean_leftovers(root: Path, stale_after_seconds: float = STALE_AFTER_SECONDS, dry_run: bool = False) -> list[tuple[Leftover, Action]]:
    """Find the leftovers under `root`, plan their cleanup and, unless `dry_run`, carry it out; returns the plan."""
    plan = plan_cleanup(find_leftovers(root), stale_after_seconds)
    if not dry_run:
        carry_out(plan)
    return plan


def plan_rows(plan: list[tuple[Leftover, Action]], root: Path) -> list[dict]:
    """One record per leftover for a report: action, kind (staged or retired), mib, idle_hours, writer and
    path (relative to `root`)."""
    return [{"action": action.value, "kind": "retired" if leftover.retired else "staged", "mib": leftover.bytes / 2**20,
             "idle_hours": leftover.idle_seconds / 3600, "writer": leftover.writer.value,
             "path": leftover.path.relative_to(root).as_posix()} for leftover, action in plan]


def plan_totals(plan: list[tuple[Leftover, Action]]) -> dict[str, float]:
    """How many leftovers each action takes (removed, restored, kept), and the MiB the removals free."""
    taken = {action: [leftover for leftover, chosen in plan if chosen is action] for action in Action}
    return {"removed": len(taken[Action.REMOVE]), "removed_mib": sum(left.bytes for left in taken[Action.REMOVE]) / 2**20,
            "restored": len(taken[Action.RESTORE]), "kept": len(taken[Action.KEEP])}


def carry_out(plan: list[tuple[Leftover, Action]]) -> None:
    """Remove or restore as `plan` says; restores first, so that a folder is back before its other retired
    versions go. A folder that a writer published since the plan was made is not replaced by a restore."""
    for leftover, action in sorted(plan, key=lambda step: step[1] is not Action.RESTORE):
        if action is Action.RESTORE and not leftover.target.exists():
            os.rename(leftover.path, leftover.target)
        elif action is not Action.KEEP:
            _remove(leftover.path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
