"""The representation study on planted data: a representation that knows the sectors beats noise on every
measure, and a text made public on a scoring date changes nothing scored with that date."""

from __future__ import annotations

import zlib
import numpy as np
import pandas as pd
import pytest

from peerlens.similarity.representation_study import (
    Representation,
    RepresentationStudyConfig,
    nearest_neighbour_agreement,
    score_representations,
    winner_margin,
)
from tests.peerlens.similarity.test_point_in_time import SECTORS, codes, daily_prices, history, monthly_returns, retext

CONFIG = RepresentationStudyConfig(anchor="noise", pca_components=8, matched_draws=3, n_boot=100, min_companies=5)
DATES = [pd.Timestamp("2017-01-01"), pd.Timestamp("2018-01-01"), pd.Timestamp("2019-01-01")]


def sector_features(texts: pd.DataFrame, noise: float, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """One row per text: the one-hot of the sector its description talks about plus Gaussian noise, ReLU'd (so
    a latent is off for some companies, as SAE latents are)."""
    sectors = list(SECTORS)
    said = [next(i for i, s in enumerate(sectors) if SECTORS[s].split()[1] in text) for text in texts.description]
    # Each text's noise is its own (seeded by its id): a text added later changes no other text's features.
    drawn = [np.random.default_rng([seed, zlib.crc32(t.encode())]).normal(0, noise, len(sectors)) for t in texts.text_id]
    matrix = np.eye(len(sectors))[said] + np.array(drawn)
    return texts.text_id.tolist(), np.maximum(matrix, 0.0)


def representations(texts: pd.DataFrame) -> list[Representation]:
    return [
        Representation("sectors", "sae", 1, "mean", 3, features=sector_features(texts, 0.05), counterpart="noise"),
        Representation("sectors specificity", "sae", 1, "specificity", 3, features=sector_features(texts, 0.05)),
        Representation("noise", "raw_residual", 1, "mean", 3, features=sector_features(texts, 50.0, seed=1)),
        Representation("tfidf", "tfidf"),
    ]


def study(texts: pd.DataFrame, returns: pd.DataFrame):
    return score_representations(representations(texts), texts, DATES, codes(texts), returns, CONFIG)


@pytest.fixture(scope="module")
def returns() -> pd.DataFrame:
    return monthly_returns(daily_prices())


def test_nearest_neighbour_agreement_counts_the_neighbours_that_share_the_label():
    points = np.array([0.0, 0.1, 0.2, 5.0, 5.1, 9.0])
    distances = np.abs(points[:, None] - points[None, :])
    shares = nearest_neighbour_agreement(distances, ["a", "a", "b", "b", "b", None], k=2)
    # 0's two nearest are 1 (a) and 2 (b); 2's are 1 and 0 (both a); 3's are 4 and 2 (both b); 5 has no label
    # and is no one's neighbour (else it would be 4's second).
    np.testing.assert_allclose(shares[:5], [0.5, 0.5, 0.0, 1.0, 1.0])
    assert np.isnan(shares[5])


def test_nearest_neighbour_agreement_rejects_a_mismatched_matrix():
    with pytest.raises(ValueError, match="distances must be"):
        nearest_neighbour_agreement(np.zeros((3, 3)), ["a", "b"], k=1)


def test_a_representation_that_knows_the_sectors_beats_noise_on_every_measure(returns):
    result = study(history(), returns)
    table = result.table.set_index("representation")
    assert sorted(result.yearly.year.unique()) == [2017, 2018, 2019]
    for name in ("sectors", "sectors specificity"):
        assert table.loc[name, "mc_matched"] > table.loc["noise", "mc_matched"] + 0.1
        assert table.loc[name, "matched_vs_anchor_low"] > 0  # the interval of the difference excludes zero
        assert table.loc[name, "agreement_gics_sector"] == pytest.approx(1.0)
    assert table.loc["noise", "agreement_gics_sector"] < 0.7
    assert table.loc["noise", "matched_vs_anchor"] == 0.0
    # "sectors" is scored against what it was "built from": the same difference as against the anchor here
    assert table.loc["sectors", "matched_vs_counterpart"] == table.loc["sectors", "matched_vs_anchor"] > 0
    assert table.counterpart.dropna().tolist() == ["noise"]
    assert {"gics_sub_industry", "random"} <= set(table.index)
    assert winner_margin(result)["winner"] in {"sectors", "sectors specificity", "tfidf"}


def test_a_text_made_public_on_a_scoring_date_changes_nothing_scored_with_that_date(returns):
    before = study(history(), returns)
    # T03, a bank, is re-described as a chip maker on 1 January 2018: the 2018 universe must not see it.
    after = study(retext(history(), "T03", "chip", "2018-01-01"), returns)

    def of_year(result, year):
        rows = result.yearly[result.yearly.year == year].set_index("method").sort_index()
        return rows.drop(columns="as_of")

    for year in (2017, 2018):
        pd.testing.assert_frame_equal(of_year(before, year), of_year(after, year))
    agreement = lambda result, day: result.agreement[result.agreement.as_of == day].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(agreement(before, DATES[1]), agreement(after, DATES[1]))
    assert not of_year(before, 2019).loc["sectors"].equals(of_year(after, 2019).loc["sectors"])


def test_the_study_refuses_an_anchor_it_does_not_hold_and_repeated_names(returns):
    texts = history()
    with pytest.raises(ValueError, match="anchor 'minilm'"):
        score_representations(representations(texts), texts, DATES, codes(texts), returns,
                              RepresentationStudyConfig(min_companies=5))
    twice = representations(texts)[:1] * 2
    with pytest.raises(ValueError, match="distinct"):
        score_representations(twice, texts, DATES, codes(texts), returns, CONFIG)


def test_a_representation_without_features_for_a_universe_text_names_it(returns):
    texts = history()
    partial = Representation("partial", "sae", features=(texts.text_id.tolist()[1:], np.ones((len(texts) - 1, 3))))
    with pytest.raises(ValueError, match=texts.text_id.iloc[0]):
        score_representations([partial, *representations(texts)], texts, DATES, codes(texts), returns, CONFIG)
