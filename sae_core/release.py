"""SAE releases: a trained set of SAEs recorded with what it was trained on, so a latent id keeps its meaning.

A release is a folder

    <releases>/<release_id>/release.json     the SaeRelease record below
    <releases>/<release_id>/sae_*/...        the SAEs, SAELens layout (`sae_core.io`)

`release_id` is a hash of the training recipe (model, SAE and training configuration), not of the
corpus: new texts are encoded with the release that exists, and only a deliberate act (a changed recipe,
or an explicit retrain) trains a new one. A retrain of the same recipe replaces the folder, and its
`trained_at` stamp (the data version downstream assets are built from) changes, which marks everything
built from the old release as stale.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sae_core.staging import replace_folder
from sae_core.sae_set import SaeSet

RELEASE_FILE = "release.json"


def release_id(recipe: dict) -> str:
    """A stable 12-hex-digit id of a training recipe (any JSON-serialisable dict; key order does not matter)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SaeRelease:
    release_id: str
    trained_at: str
    """UTC ISO timestamp of the training run: the release's version."""
    recipe: dict
    """What the id hashes: model, SAE config, training config."""
    corpus: list[str]
    """The documents (text ids) whose tokens it was trained and evaluated on."""
    trained: SaeSet
    """The trained set: each SAE's layers, folder and held-out metrics, and the configurations."""
    notes: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return f"{self.release_id}@{self.trained_at}"

    def to_dict(self) -> dict:
        return {**asdict(self), "trained": self.trained.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> SaeRelease:
        return cls(**{**data, "trained": SaeSet.from_dict(data["trained"])})


def new_release(recipe: dict, corpus: list[str], trained: SaeSet, notes: dict | None = None) -> SaeRelease:
    stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    return SaeRelease(release_id(recipe), stamp, recipe, sorted(corpus), trained, notes or {})


def load_release(folder: str | Path) -> SaeRelease | None:
    """The release recorded in `folder`, or None when there is none (never trained, or a crashed publish)."""
    path = Path(folder) / RELEASE_FILE
    if not path.exists():
        return None
    try:
        return SaeRelease.from_dict(json.loads(path.read_text()))
    except (TypeError, KeyError, ValueError) as error:
        raise ValueError(f"{path} is not a release this version can read ({error}); retrain: true replaces it") from None


def publish_release(staging: Path, release: SaeRelease, folder: Path) -> None:
    """Write release.json into `staging` (which holds the SAEs) and move it onto `folder` (`sae_core.staging.replace_folder`).

    A crash between retiring the old release and moving the new one in leaves no release.json at
    `folder`, which reads as "no release" and trains again, never as half of one.
    """
    (staging / RELEASE_FILE).write_text(json.dumps(release.to_dict(), indent=2))
    replace_folder(staging, folder)
