"""Massive activations: the few tokens whose residual vectors dwarf every other token's.

Sun et al. (2024, "Massive Activations in Large Language Models") found that LLMs put activations
~10^3–10^5 times the median into a handful of coordinates of a few tokens, from a middle layer on:
the first token of a sequence and some delimiters. They act as fixed biases and attention sinks;
what they carry is the same whatever the token, not the meaning of the text. Capture prepends BOS
so that the sink falls on BOS, which it drops, but the model does not always agree: in SmolLM2-135M-Instruct
(Q4_1) on the sample the *first real token* of 19 of 381 descriptions («Amazon», «Microsoft», «Delta», …)
turns into a second sink at layer 11, its residual norm peaking at 27–151 times the layer's median
and staying far above it through layer 27 (still 3–11 times it at layers 28–29, where no ordinary
token exceeds 3). At layer 19
those 19 tokens hold 32% of the sum of squared norms of 104k tokens. Left in, they decide what an
SAE learns, flatter its FVU, and make up most of the pooled feature vector of their company, whose
nearest neighbours then become the other companies with a sink.

The rule (a robust per-layer bound on the token's residual norm). With n_{t,l} = ‖x_{t,l}‖ the
norm of token t's residual after layer l, over the N tokens of a store:

    m_l      = median_t n_{t,l}                           the layer's typical norm   (L,)
    r_{t,l}  = n_{t,l} / m_l                              token t's norm ratio       (N, L)
    massive(t)  ⇔  max_l r_{t,l} > norm_multiple                                     (N,)

The median is robust where a mean or a standard deviation is not: the very tokens it must find
cannot move it. dictionary_learning's activation buffer uses the same bound per layer
(`max_activation_norm_multiple`, 10); SAELens and sparsify exclude tokens by id only
(`exclude_special_tokens`, `exclude_tokens`), which cannot catch a sink on «Amazon». A token is
massive as a whole, not per layer: once a token has served as a sink its states are atypical at
every later layer, and one set of tokens for every layer keeps the layers comparable (the same
tokens enter D̄, every SAE's training and evaluation, and pooling).

The default multiple, 20, sits in the gap measured on the sample: the 19 sinks peak at 27–151,
every other token at ≤ 12.1 (a few hundred « the» tokens reach 10–12 at layers 2–4 and are
ordinary from layer 5 on). `benchmarks/massive_activations.py` is the measurement behind it and
behind the treatment.

Treatments: "exclude" (default) keeps massive tokens out of layer distances, SAE training and
evaluation, spliced evaluation and company pooling; "keep" finds and reports them but changes
nothing (the behaviour before this module, for comparison). Clipping a massive token's norm to the
bound was measured and rejected. On the sample, with one SAE at the feature layer (layer 19):

                                       keep    clip    exclude
    FVU, all non-massive tokens        0.164   0.162   0.155
    largest token share, median of     0.378   0.159   0.007
      the 19 companies with a sink
    their nearest neighbour has a      19/19   19/19   1/19
      sink too
    their 5-NN GICS-sector agreement   0.15    0.21    0.71      (0.60 for the other companies)

A clipped sink still points along the few massive coordinates, at 20 times a normal token's norm,
so the companies that have one still find each other first; excluded, they find their industry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

TREATMENTS = ("exclude", "keep")
DEFAULT_NORM_MULTIPLE = 20.0


def norm_ratios(norms: Tensor) -> tuple[Tensor, Tensor]:
    """Each layer's median norm m_l and every token's ratio r_{t,l} = n_{t,l} / m_l.

    Args:
        norms: (N, L) residual norms, one row per token, one column per layer.

    Returns:
        (median_norms (L,), ratios (N, L)), both float32.
    """
    if norms.ndim != 2 or norms.shape[0] == 0 or norms.shape[1] == 0:
        raise ValueError(f"norms must be a non-empty (n_tokens, n_layers) tensor, got shape {tuple(norms.shape)}")
    norms = norms.float()
    if not torch.isfinite(norms).all() or (norms < 0).any():
        raise ValueError("norms must be finite and nonnegative")
    medians = norms.median(dim=0).values
    if (medians == 0).any():
        raise ValueError(f"layers {torch.nonzero(medians == 0).flatten().tolist()} have a median norm of 0")
    return medians, norms / medians


@dataclass(frozen=True)
class MassiveRule:
    """The rule with its reference medians, as an SAE release records it: tokens captured after the release
    (a new filing's) are judged against the medians of the corpus it was trained on,

        massive(t)  ⇔  max_l n_{t,l} / m_l^ref > norm_multiple,

    so one day's tokens are judged without the rest of the corpus, and a token of the training corpus is
    judged exactly as `find_massive_tokens` judged it there.
    """

    norm_multiple: float
    treatment: str
    median_norms: tuple[float, ...]
    """m_l^ref, (L,): the training corpus's median norm of every layer."""

    def __post_init__(self) -> None:
        if self.treatment not in TREATMENTS:
            raise ValueError(f"treatment must be one of {TREATMENTS}, got {self.treatment!r}")
        if not self.norm_multiple > 1:
            raise ValueError(f"norm_multiple must be > 1 (a multiple of the median norm), got {self.norm_multiple!r}")
        if not self.median_norms or not all(m > 0 for m in self.median_norms):
            raise ValueError("median_norms must hold one positive median per layer")

    def massive_mask(self, norms: Tensor) -> Tensor:
        """(N,) bool: True on the tokens of `norms` (N, L) that the rule finds massive."""
        if norms.ndim != 2 or norms.shape[1] != len(self.median_norms):
            raise ValueError(
                f"norms must be (n_tokens, {len(self.median_norms)} layers) like the rule's medians, "
                f"got shape {tuple(norms.shape)}"
            )
        ratios = norms.float() / torch.tensor(self.median_norms, dtype=torch.float32)
        return (ratios > self.norm_multiple).any(dim=1)

    def usable_mask(self, norms: Tensor) -> Tensor:
        """(N,) bool: the tokens whose activations may be read (all of them under "keep")."""
        massive = self.massive_mask(norms)
        return torch.ones_like(massive) if self.treatment == "keep" else ~massive

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MassiveRule:
        return cls(float(data["norm_multiple"]), str(data["treatment"]), tuple(float(m) for m in data["median_norms"]))


@dataclass(frozen=True)
class MassiveTokens:
    """The massive tokens of an activation store, found by the module's rule, and what to do with them."""

    norm_multiple: float
    """A token is massive when its norm exceeds this multiple of the layer's median at some layer."""
    treatment: str
    """"exclude": massive tokens are left out wherever token activations are read; "keep": reported only."""
    n_tokens: int
    """Tokens in the store (N)."""
    median_norms: tuple[float, ...]
    """m_l for every layer, (L,)."""
    tokens_over_bound: tuple[int, ...]
    """Per layer l, how many tokens have r_{t,l} > norm_multiple, (L,)."""
    rows: tuple[int, ...]
    """Store rows (index order) of the massive tokens, ascending."""
    peak_ratios: tuple[float, ...]
    """max_l r_{t,l} of each massive token, aligned with `rows`."""
    peak_layers: tuple[int, ...]
    """The layer where each massive token's ratio peaks, aligned with `rows`."""

    def __post_init__(self) -> None:
        self.rule  # building the rule validates norm_multiple, treatment and median_norms
        if not len(self.rows) == len(self.peak_ratios) == len(self.peak_layers):
            raise ValueError("rows, peak_ratios and peak_layers must have one entry per massive token")
        if any(not 0 <= row < self.n_tokens for row in self.rows):
            raise ValueError(f"massive token rows must lie in 0..{self.n_tokens - 1}")

    @property
    def n_layers(self) -> int:
        return len(self.median_norms)

    @property
    def rule(self) -> MassiveRule:
        """The rule and this store's medians: what judges tokens captured after it."""
        return MassiveRule(self.norm_multiple, self.treatment, self.median_norms)

    def massive_mask(self) -> Tensor:
        """(N,) bool: True on the massive tokens."""
        mask = torch.zeros(self.n_tokens, dtype=torch.bool)
        mask[list(self.rows)] = True
        return mask

    def usable_mask(self, n_tokens: int) -> Tensor:
        """(N,) bool: the tokens whose activations may be read (all of them under "keep").

        `n_tokens` is the size of the store about to be read: a store of another size is not the
        one these tokens were found in, and its rows would be misread, so it is refused.
        """
        if n_tokens != self.n_tokens:
            raise ValueError(
                f"massive tokens were found in a store of {self.n_tokens} tokens, but this store has {n_tokens}: "
                "re-materialize massive_activations after activation_corpus"
            )
        if self.treatment == "keep":
            return torch.ones(self.n_tokens, dtype=torch.bool)
        return ~self.massive_mask()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MassiveTokens:
        return cls(
            norm_multiple=float(data["norm_multiple"]),
            treatment=str(data["treatment"]),
            n_tokens=int(data["n_tokens"]),
            median_norms=tuple(float(m) for m in data["median_norms"]),
            tokens_over_bound=tuple(int(c) for c in data["tokens_over_bound"]),
            rows=tuple(int(r) for r in data["rows"]),
            peak_ratios=tuple(float(r) for r in data["peak_ratios"]),
            peak_layers=tuple(int(layer) for layer in data["peak_layers"]),
        )


def find_massive_tokens(
    norms: Tensor, norm_multiple: float = DEFAULT_NORM_MULTIPLE, treatment: str = "exclude"
) -> MassiveTokens:
    """Apply the module's rule to a store's residual norms (N, L) (`ActivationStore.token_norms`)."""
    medians, ratios = norm_ratios(norms)
    peak_ratio, peak_layer = ratios.max(dim=1)
    rows = torch.nonzero(peak_ratio > norm_multiple).flatten()
    return MassiveTokens(
        norm_multiple=float(norm_multiple),
        treatment=treatment,
        n_tokens=int(norms.shape[0]),
        median_norms=tuple(medians.tolist()),
        tokens_over_bound=tuple((ratios > norm_multiple).sum(dim=0).tolist()),
        rows=tuple(rows.tolist()),
        peak_ratios=tuple(peak_ratio[rows].tolist()),
        peak_layers=tuple(peak_layer[rows].tolist()),
    )
