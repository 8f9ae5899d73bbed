"""Reading a long document in overlapping windows: which tokens each forward pass runs and which it stores.

Pure bookkeeping on token positions (no model): `sae_core.capture` runs the windows it lays out, and an
activation store records the settings (`CaptureWindows.settings()`) it was captured with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple


class Window(NamedTuple):
    """One forward pass over a stretch of a document, in positions of the whole document."""

    start: int
    """Position of the window's first token."""
    stop: int
    """One past its last token: the pass runs tokens[start:stop], behind BOS."""
    kept_from: int
    """Position of the first token it stores; tokens[start:kept_from] are run as left context only."""


def check_window_settings(window: int, stride: int, max_document_tokens: int | None = None) -> None:
    """ValueError naming the setting when windows of `window` tokens advancing by `stride` cannot read a document."""
    if window < 2:
        raise ValueError(
            f"window must be at least 2 tokens (a window of 1 reads every token without its text), got {window}"
        )
    if stride < 1:
        raise ValueError(f"stride must be at least 1 token, got {stride}")
    if stride > window:
        raise ValueError(
            f"stride ({stride}) must not exceed window ({window}): the {stride - window} tokens between two "
            "windows would never be read"
        )
    if max_document_tokens is not None and max_document_tokens < 1:
        raise ValueError(
            f"max_document_tokens must be positive or None (the whole document), got {max_document_tokens}"
        )


def document_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """Overlapping windows over a document of `n_tokens` tokens that store each token exactly once.

    Window k runs tokens [k·stride, min(k·stride + window, n)), k = 0..K-1 with
    K = 1 + ⌈max(n - window, 0) / stride⌉ (none when n = 0). Window 0 stores all its tokens; window
    k ≥ 1 stores only those no earlier window ran, [(k-1)·stride + window, stop): its last `stride`
    (fewer at the end). So each stored token after the first window sees at least window - stride
    tokens before it, and the model runs Σ (stop - start) ≈ n · window / stride tokens for n ≫ window.
    """
    check_window_settings(window, stride)
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    windows, start, covered = [], 0, 0
    while covered < n_tokens:
        stop = min(start + window, n_tokens)
        windows.append(Window(start, stop, covered))
        start, covered = start + stride, stop
    return windows


class CaptureCost(NamedTuple):
    """What reading documents in windows costs, counted before any model pass."""

    documents: int
    tokens: int
    """Document tokens stored: Σ min(n, max_document_tokens)."""
    tokens_run: int
    """Tokens run through the model, BOS not counted: Σ over windows of (stop - start) ≥ tokens."""
    windows: int
    """Forward sequences, one per window (each behind its own BOS)."""
    documents_windowed: int
    """Documents read in more than one window (longer than `window` after the cap)."""
    documents_cut: int
    """Documents longer than max_document_tokens: their tokens beyond it are never read."""


@dataclass(frozen=True)
class CaptureWindows:
    """How a document is read: windows of `window` tokens advancing by `stride` (`document_windows`),
    over its first `max_document_tokens` tokens (None: the whole document).

    The one-pass truncation of before is `CaptureWindows(window=512, stride=512, max_document_tokens=512)`.
    With stride < window the first tokens of every later window are context only, so a second attention
    sink forming there (see `capture_batch`) is never stored; with stride = window it may be.
    """

    window: int
    stride: int
    max_document_tokens: int | None = None

    def __post_init__(self) -> None:
        check_window_settings(self.window, self.stride, self.max_document_tokens)

    def of(self, n_tokens: int) -> list[Window]:
        """The windows over a document of `n_tokens` tokens, after the cap."""
        cap = self.max_document_tokens
        return document_windows(n_tokens if cap is None else min(n_tokens, cap), self.window, self.stride)

    def settings(self) -> dict:
        """window, stride, max_document_tokens: what an activation store records it was captured with."""
        return asdict(self)

    def cost(self, lengths: Sequence[int]) -> CaptureCost:
        """The cost of reading documents of `lengths` tokens."""
        windows = [self.of(n) for n in lengths]
        return CaptureCost(
            documents=len(lengths),
            tokens=sum(w[-1].stop for w in windows if w),
            tokens_run=sum(stop - start for w in windows for start, stop, _ in w),
            windows=sum(map(len, windows)),
            documents_windowed=sum(len(w) > 1 for w in windows),
            documents_cut=sum(self.max_document_tokens is not None and n > self.max_document_tokens for n in lengths),
        )
