"""A disk that is full for one writer: its staging file is a link to /dev/full, whose every write is ENOSPC."""

from pathlib import Path

import pytest

FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full, the device whose every write is ENOSPC")


def stage_on_a_full_disk(monkeypatch, module) -> None:
    """Make `module`'s writer stage every file on /dev/full (its `staged_sibling`, imported from sae_core.staging)."""
    staged_sibling = module.staged_sibling

    def staging_on_a_full_disk(target: Path) -> Path:
        staging = staged_sibling(target)
        staging.symlink_to(FULL)
        return staging

    monkeypatch.setattr(module, "staged_sibling", staging_on_a_full_disk)
