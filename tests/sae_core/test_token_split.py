"""Specification of the token split (sae_core.token_split): held-out companies whole, massive tokens out."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from sae_core.massive_activations import find_massive_tokens
from sae_core.token_split import holdout_documents, holdout_mask, token_split

DOCUMENTS = pd.Series([f"CO{number}" for number in range(20) for _ in range(5)])  # 20 companies × 5 tokens


def massive_at(rows: list[int], treatment: str = "exclude"):
    norms = torch.ones(len(DOCUMENTS), 3)
    norms[rows, 1] = 100.0
    return find_massive_tokens(norms, treatment=treatment)


def test_companies_are_held_out_whole():
    held_out = pd.Series(holdout_mask(DOCUMENTS, 0.3))
    assert held_out.groupby(DOCUMENTS).nunique().eq(1).all()
    assert 0 < held_out.groupby(DOCUMENTS).first().sum() < 20


def test_massive_tokens_are_neither_trained_on_nor_scored_but_join_the_with_massive_set():
    held_out = holdout_mask(DOCUMENTS, 0.3)
    in_training, in_held_out = int((~held_out).nonzero()[0][0]), int(held_out.nonzero()[0][0])
    split = token_split(DOCUMENTS, 0.3, massive_at([in_training, in_held_out]))
    assert not split.train[in_training] and not split.evaluate[in_held_out]
    assert split.with_massive[in_training] and split.with_massive[in_held_out]
    assert int(split.train.sum() + split.evaluate.sum()) == len(DOCUMENTS) - 2
    assert torch.equal(split.with_massive & ~split.evaluate, torch.tensor([i in (in_training, in_held_out)
                                                                          for i in range(len(DOCUMENTS))]))


def test_kept_massive_tokens_are_trained_on_and_scored_like_any_token():
    held_out = torch.from_numpy(holdout_mask(DOCUMENTS, 0.3))
    split = token_split(DOCUMENTS, 0.3, massive_at([0, 7], treatment="keep"))
    assert torch.equal(split.train, ~held_out) and torch.equal(split.evaluate, held_out)


@pytest.mark.parametrize(("share", "message"), [(1.0, "leaves no training"), (0.0, r"share must be in \(0, 1\]")])
def test_a_share_that_empties_either_side_is_refused(share, message):
    with pytest.raises(ValueError, match=message):
        token_split(DOCUMENTS, share, massive_at([]))


# --- held-out documents -----------------------------------------------------------------------------

NAMES = [f"TICKER{i}" for i in range(2000)]


def test_holdout_depends_on_names_not_their_order():
    held_out = {NAMES[i] for i in holdout_documents(NAMES, 0.1)}
    reversed_names = NAMES[::-1]
    assert {reversed_names[i] for i in holdout_documents(reversed_names, 0.1)} == held_out


def test_holdout_takes_about_the_share_asked_and_a_larger_share_holds_out_a_superset():
    small, large = set(holdout_documents(NAMES, 0.1)), set(holdout_documents(NAMES, 0.3))
    assert 0.08 * len(NAMES) < len(small) < 0.12 * len(NAMES)
    assert 0.27 * len(NAMES) < len(large) < 0.33 * len(NAMES)
    assert small < large
    assert holdout_documents(NAMES, 1.0) == list(range(len(NAMES)))


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_holdout_rejects_a_share_outside_zero_to_one(share):
    with pytest.raises(ValueError, match="share"):
        holdout_documents(NAMES, share)


def test_a_small_universe_always_holds_out_one_company_the_same_one_at_any_share():
    # crc32 mod 1000: acme 814, bolt 231; no share below 0.232 holds either out by the rule itself.
    assert [holdout_documents(["acme", "bolt"], share) for share in (0.001, 0.1, 0.3)] == [[1], [1], [1]]
    assert holdout_documents(["only"], 0.1) == []  # one company cannot be both trained and scored on
