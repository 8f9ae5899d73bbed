"""A write that fails on a full disk, named: pyarrow, safetensors and Python name no file when the disk is full.

No torch here: `peerlens.layout` (and so the `peerlens` CLI) uses it too.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def naming_a_full_disk(target: str | Path) -> Iterator[None]:
    """Re-raise a write that failed on a full disk (or a full quota) as an OSError that names `target`.

    The libraries name no file: pyarrow raises OSError 28 "Error writing bytes to file", safetensors a
    SafetensorError whose message ends in "(os error 28)". The new error keeps errno ENOSPC (or EDQUOT).
    """
    try:
        yield
    except Exception as error:
        code = next((c for c in (errno.ENOSPC, errno.EDQUOT)
                     if getattr(error, "errno", None) == c or f"(os error {c})" in str(error)), None)
        if code is None:
            raise
        raise OSError(code, f"the disk is full: no space left to write {target} ({error})") from error
