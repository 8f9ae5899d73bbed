"""Specification of massive-token detection (sae_core.massive_activations) and of the text rule
(sae_core.text): planted norms with known answers, and bad input named."""

from __future__ import annotations

import pytest
import torch

from sae_core.massive_activations import MassiveRule, MassiveTokens, find_massive_tokens, norm_ratios
from sae_core.text import checked_text, is_blank


def planted_norms(n_tokens: int = 200, n_layers: int = 4, seed: int = 0) -> torch.Tensor:
    """(n_tokens, n_layers) norms spread around 10·(l + 1), within ±20%."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.arange(1, n_layers + 1, dtype=torch.float32) * 10
    return base * (0.8 + 0.4 * torch.rand(n_tokens, n_layers, generator=generator))


def test_a_token_far_above_its_layers_median_at_one_layer_is_massive_with_its_peak():
    norms = planted_norms()
    median = norms[:, 2].median()
    norms[17, 2] = 60 * median  # a sink at layer 2 only
    norms[90, 1] = 15 * norms[:, 1].median()  # high, but under a bound of 20
    found = find_massive_tokens(norms, norm_multiple=20)
    assert found.rows == (17,)
    assert found.peak_layers == (2,)
    assert found.peak_ratios[0] == pytest.approx(60, rel=0.02)
    assert found.tokens_over_bound == (0, 0, 1, 0)
    assert find_massive_tokens(norms, norm_multiple=10).rows == (17, 90)


def test_the_median_is_not_moved_by_the_tokens_it_must_find():
    norms = planted_norms()
    clean_medians, _ = norm_ratios(norms)
    norms[:5] *= 1000  # 2.5% of the tokens become giants at every layer
    medians, ratios = norm_ratios(norms)
    torch.testing.assert_close(medians, clean_medians, rtol=0.05, atol=0)
    assert find_massive_tokens(norms).rows == (0, 1, 2, 3, 4)
    assert ratios.shape == norms.shape


def test_exclude_makes_massive_tokens_unusable_and_keep_uses_every_token():
    norms = planted_norms()
    norms[[3, 150], 1] *= 100
    excluded = find_massive_tokens(norms, treatment="exclude")
    kept = find_massive_tokens(norms, treatment="keep")
    assert excluded.massive_mask().nonzero().flatten().tolist() == [3, 150]
    assert (~excluded.usable_mask(200)).nonzero().flatten().tolist() == [3, 150]
    assert kept.usable_mask(200).all() and kept.massive_mask().sum() == 2


def test_a_store_of_another_size_is_refused_rather_than_misread():
    found = find_massive_tokens(planted_norms())
    with pytest.raises(ValueError, match="store of 200 tokens, but this store has 201"):
        found.usable_mask(201)


def test_the_record_survives_its_json_form():
    norms = planted_norms()
    norms[42, 3] *= 50
    found = find_massive_tokens(norms)
    assert MassiveTokens.from_dict(found.to_dict()) == found


def test_the_rule_judges_the_corpus_it_was_found_in_exactly_as_it_was_found():
    norms = planted_norms()
    norms[[7, 120], 2] *= 80
    for treatment in ("exclude", "keep"):
        found = find_massive_tokens(norms, treatment=treatment)
        assert torch.equal(found.rule.massive_mask(norms), found.massive_mask())
        assert torch.equal(found.rule.usable_mask(norms), found.usable_mask(200))
    assert MassiveRule.from_dict(found.rule.to_dict()) == found.rule


def test_a_later_day_is_judged_against_the_training_corpus_medians_not_its_own():
    rule = find_massive_tokens(planted_norms()).rule
    # One short filing whose tokens are mostly sinks: its own median is a sink's, so by its own measure
    # no token is massive; against the corpus every sink is.
    day = planted_norms(n_tokens=5, seed=1)
    day[2:] *= 100
    assert find_massive_tokens(day).rows == ()
    assert rule.massive_mask(day).tolist() == [False, False, True, True, True]
    assert rule.usable_mask(day).tolist() == [True, True, False, False, False]
    kept = MassiveRule(rule.norm_multiple, "keep", rule.median_norms)
    assert kept.usable_mask(day).all() and kept.massive_mask(day).sum() == 3


@pytest.mark.parametrize(
    ("norms", "rule", "message"),
    [
        (torch.ones(5, 3), {}, r"\(n_tokens, 4 layers\)"),
        (torch.ones(5, 4), {"median_norms": (1.0, 0.0, 1.0, 1.0)}, "one positive median per layer"),
        (torch.ones(5, 4), {"treatment": "clip"}, "treatment must be one of"),
    ],
)
def test_a_rule_for_other_layers_or_with_a_bad_field_is_refused(norms, rule, message):
    reference = find_massive_tokens(planted_norms()).rule.to_dict()
    with pytest.raises(ValueError, match=message):
        MassiveRule.from_dict({**reference, **rule}).massive_mask(norms)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"treatment": "clip"}, "treatment must be one of"),
        ({"norm_multiple": 1.0}, "norm_multiple must be > 1"),
        ({"rows": (500,), "peak_ratios": (30.0,), "peak_layers": (1,)}, "rows must lie in 0..199"),
        ({"rows": (5,)}, "one entry per massive token"),
    ],
)
def test_an_inconsistent_record_is_refused_naming_the_field(changes, message):
    record = find_massive_tokens(planted_norms()).to_dict()
    with pytest.raises(ValueError, match=message):
        MassiveTokens.from_dict({**record, **changes})


@pytest.mark.parametrize(
    ("norms", "message"),
    [
        (torch.zeros(0, 3), "non-empty"),
        (torch.tensor([[1.0, float("nan")], [1.0, 2.0]]), "finite and nonnegative"),
        (torch.tensor([[0.0, 1.0], [0.0, 2.0], [1.0, 2.0]]), r"layers \[0\] have a median norm of 0"),
    ],
)
def test_bad_norms_are_refused(norms, message):
    with pytest.raises(ValueError, match=message):
        find_massive_tokens(norms)


# --- what counts as text ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", " \t\n", "\u200b", "\u200b\u200c\u200d\u2060\ufeff\u00ad", "\u3000\u00a0",
     "<p>&nbsp;</p>", "<div class='x'>\n<br/>&#8203;</div><!-- <b>empty</b> -->"],
)
def test_whitespace_invisible_characters_and_markup_alone_are_blank(text):
    assert is_blank(text)


@pytest.mark.parametrize("text", ["a", "\u200bAmazon", "株式会社", "—", "5", "<p>Makes anvils.</p>", "&amp;", "<3", "a < b"])
def test_one_visible_character_makes_text(text):
    assert not is_blank(text)
    assert checked_text(text, "company 'AMZN'") == text


@pytest.mark.parametrize(("value", "problem"), [(float("nan"), "missing"), (None, "missing"), ("\u200b", "empty")])
def test_a_missing_or_blank_description_is_named(value, problem):
    with pytest.raises(ValueError, match=f"company 'AMZN': the description is {problem}"):
        checked_text(value, "company 'AMZN'")
