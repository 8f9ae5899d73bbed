"""Specification of cluster explanations (peerlens.similarity.explain)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from peerlens.similarity.explain import (
    describe_latents,
    explain_clusters,
    explanations_markdown,
    latent_contributions,
)

TICKERS = ["JPM", "BAC", "WFC", "XOM", "CVX", "AAPL"]


def planted_features() -> np.ndarray:
    """Six companies, eight latents: the three banks (rows 0–2) share latent 3 strongly,
    the two oil companies (rows 3–4) share latent 6; everything else is small noise."""
    rng = np.random.default_rng(0)
    features = rng.uniform(0.0, 0.2, size=(6, 8))
    features[:3, 3] += 5.0
    features[3:5, 6] += 4.0
    return features


LABELS = np.array([0, 0, 0, 1, 1, 2])


def mean_pairwise_cosine(rows: np.ndarray) -> float:
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    c = len(rows)
    return float(sum(unit[a] @ unit[b] for a in range(c) for b in range(a + 1, c)) * 2 / (c * (c - 1)))


def test_latent_contributions_single_out_the_shared_latent_and_sum_to_the_similarity():
    features = planted_features()
    contributions = latent_contributions(features, np.array([0, 1, 2]))
    assert contributions.shape == (8,)
    assert int(np.argmax(contributions)) == 3
    assert contributions.sum() == pytest.approx(mean_pairwise_cosine(features[:3]), abs=1e-9)
    assert (contributions >= 0).all()


def test_latent_contribution_is_the_drop_in_similarity_when_the_latent_is_zeroed():
    features = planted_features()
    members = np.array([0, 1, 2, 5])
    contributions = latent_contributions(features, members)
    unit = features[members] / np.linalg.norm(features[members], axis=1, keepdims=True)
    c = len(members)
    for latent in range(8):
        dropped = unit.copy()
        dropped[:, latent] = 0.0  # no renormalisation: the definition of s_j
        gram = dropped @ dropped.T
        similarity = (gram.sum() - np.trace(gram)) / (c * (c - 1))
        assert contributions.sum() - similarity == pytest.approx(contributions[latent], abs=1e-12)


def test_latent_contributions_reject_a_cluster_of_one():
    with pytest.raises(ValueError, match="at least 2 members"):
        latent_contributions(planted_features(), np.array([4]))


def test_latent_contributions_reject_negative_features():
    with pytest.raises(ValueError, match="nonnegative"):
        latent_contributions(-planted_features(), np.array([0, 1]))


def test_explain_clusters_reports_the_planted_latent_first_with_its_share():
    features = planted_features()
    explained = explain_clusters(features, TICKERS, LABELS, top_latents=3)
    assert list(explained.columns) == [
        "cluster", "size", "members", "latent", "rank", "contribution", "share", "within_similarity"
    ]
    # The singleton (AAPL) is not explained; the larger cluster comes first.
    assert explained["cluster"].unique().tolist() == [0, 1]
    banks = explained[explained["cluster"] == 0]
    assert banks["members"].iloc[0] == "BAC, JPM, WFC"
    assert banks["size"].iloc[0] == 3
    assert banks["rank"].tolist() == [1, 2, 3]
    assert banks["latent"].iloc[0] == 3
    assert explained.loc[explained["cluster"] == 1, "latent"].iloc[0] == 6

    similarity = mean_pairwise_cosine(features[:3])
    np.testing.assert_allclose(banks["within_similarity"], similarity, atol=1e-9)
    np.testing.assert_allclose(banks["share"], banks["contribution"] / similarity)
    assert banks["share"].iloc[0] > 0.9
    assert banks["contribution"].is_monotonic_decreasing


def test_explain_clusters_respects_min_size():
    explained = explain_clusters(planted_features(), TICKERS, LABELS, min_size=3)
    assert explained["cluster"].unique().tolist() == [0]


# ---- describe_latents ------------------------------------------------------------------------------


def toy_token_index() -> pd.DataFrame:
    """Store order: document A (10 tokens, ids 100–109) then document B (5 tokens, ids 200–204)."""
    return pd.DataFrame(
        {
            "document": ["A"] * 10 + ["B"] * 5,
            "position": list(range(10)) + list(range(5)),
            "token_id": list(range(100, 110)) + list(range(200, 205)),
        }
    )


def toy_decode(ids: list[int]) -> str:
    return " ".join(f"t{i}" for i in ids)


def test_describe_latents_shows_each_hit_with_its_context_inside_its_document():
    top_tokens = pd.DataFrame(
        {"latent": [7, 7, 2], "rank": [1, 2, 1], "token_index": [5, 11, 0], "activation": [3.0, 2.0, 1.0]}
    )
    features = np.zeros((3, 8))
    features[:, 7] = [0.5, 0.0, 2.0]
    features[:, 2] = [0.1, 0.3, 0.2]
    described = describe_latents(
        top_tokens, toy_token_index(), toy_decode, features, ["A", "B", "C"], context=4, n_companies=5
    )
    assert described["latent"].tolist() == [2, 7]
    by_latent = described.set_index("latent")
    # Hit at A:5 — four tokens each side, and A:0 lies beyond the window on the left.
    # Hit at B:1 — the left window stops at the document boundary (A's tokens are not B's context).
    assert by_latent.at[7, "top_tokens"] == (
        "…t101 t102 t103 t104 «t105» t106 t107 t108 t109 | t200 «t201» t202 t203 t204"
    )
    assert by_latent.at[2, "top_tokens"] == "«t100» t101 t102 t103 t104…"
    assert by_latent.at[7, "top_companies"] == "C, A"  # B's value is 0: the latent is not active there
    assert by_latent.at[2, "top_companies"] == "B, C, A"


def test_describe_latents_finds_context_when_the_store_interleaves_documents():
    index = toy_token_index()
    shuffled = index.sample(frac=1.0, random_state=0).reset_index(drop=True)
    hit = int(np.flatnonzero((shuffled["document"] == "A") & (shuffled["position"] == 5))[0])
    top_tokens = pd.DataFrame({"latent": [0], "rank": [1], "token_index": [hit], "activation": [1.0]})
    described = describe_latents(top_tokens, shuffled, toy_decode, np.ones((1, 1)), ["A"], context=2)
    assert described.at[0, "top_tokens"] == "…t103 t104 «t105» t106 t107…"


def test_describe_latents_rejects_token_rows_outside_the_index():
    top_tokens = pd.DataFrame({"latent": [0], "rank": [1], "token_index": [15], "activation": [1.0]})
    with pytest.raises(ValueError, match="token_index"):
        describe_latents(top_tokens, toy_token_index(), toy_decode, np.ones((1, 1)), ["A"])


# ---- markdown --------------------------------------------------------------------------------------


def test_explanations_markdown_writes_a_table_per_cluster_and_escapes_pipes():
    explained = explain_clusters(planted_features(), TICKERS, LABELS, top_latents=2)
    described = pd.DataFrame(
        {
            "latent": [3, 6],
            "top_tokens": ["…provides «loans» to… | «deposit» accounts", "«oil»\nand gas"],
            "top_companies": ["JPM, BAC", "XOM, CVX"],
        }
    )
    markdown = explanations_markdown(explained, described)
    assert markdown.count("## Cluster") == 2
    bank_similarity = explained.loc[explained["cluster"] == 0, "within_similarity"].iloc[0]
    assert f"## Cluster 0 — 3 companies, within-cluster similarity {bank_similarity:.3f}" in markdown
    assert "Members: BAC, JPM, WFC" in markdown
    assert "| latent | share | top tokens | top companies |" in markdown
    share = explained.loc[(explained["cluster"] == 0) & (explained["rank"] == 1), "share"].iloc[0]
    assert f"| 3 | {share:.1%} | …provides «loans» to… \\| «deposit» accounts | JPM, BAC |" in markdown
    assert "| 6 | " in markdown and "«oil» and gas" in markdown  # newline flattened inside the cell
    # A latent with no description gets a dash rather than disappearing.
    assert "| — | — |" in markdown


def test_explanations_markdown_caps_the_number_of_clusters():
    explained = explain_clusters(planted_features(), TICKERS, LABELS)
    described = pd.DataFrame(columns=["latent", "top_tokens", "top_companies"])
    markdown = explanations_markdown(explained, described, max_clusters=1)
    assert markdown.count("## Cluster") == 1
    assert "1 more clusters not shown" in markdown


def test_specificity_weighting_zeroes_a_latent_every_company_shares():
    from peerlens.similarity.explain import specificity_weighted

    features = np.array([[1.0, 2.0, 0.0], [1.0, 0.0, 3.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    weighted = specificity_weighted(features)
    np.testing.assert_allclose(weighted[:, 0], 0.0)
    np.testing.assert_allclose(weighted[0, 1], 2.0 * np.log(4.0))
    np.testing.assert_allclose(weighted[1, 2], 3.0 * np.log(4.0))


# ---- per-company top latents -----------------------------------------------------------------------


def test_company_top_latents_rank_by_specificity_and_leave_out_boilerplate():
    from peerlens.similarity.company_latents import company_top_latents

    # Latent 0 fires everywhere (weight 0), latent 1 in two companies (ln 2), latent 2 in one (ln 4).
    features = np.array([[5.0, 1.0, 0.5], [5.0, 1.0, 0.0], [5.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    top = company_top_latents(features, ["A", "B", "C", "D"], n_latents=3)
    assert list(top.columns) == ["ticker", "rank", "latent", "value", "weighted_value", "share"]
    # A: latent 2 (0.5 ln 4 = 0.693) ties latent 1 (1 ln 2 = 0.693); equal values go by latent index.
    a = top[top.ticker == "A"]
    assert a["latent"].tolist() == [1, 2] and a["rank"].tolist() == [1, 2]
    np.testing.assert_allclose(a["weighted_value"], [np.log(2.0), 0.5 * np.log(4.0)])
    np.testing.assert_allclose(a["share"], [0.5, 0.5])  # squares of the unit profile: they sum to 1
    assert a["value"].tolist() == [1.0, 0.5]
    assert top[top.ticker == "B"]["latent"].tolist() == [1]
    assert set(top.ticker) == {"A", "B"}  # C and D have nothing but boilerplate


def test_company_top_latents_keep_n_latents_and_shares_are_the_profile_squared():
    from peerlens.similarity.company_latents import company_profiles, company_top_latents

    rng = np.random.default_rng(1)
    features = rng.uniform(0.0, 1.0, size=(5, 12)) * (rng.uniform(size=(5, 12)) > 0.5)
    top = company_top_latents(features, list("ABCDE"), n_latents=2)
    assert top.groupby("ticker").size().max() == 2
    profiles = company_profiles(features)
    rows = top.ticker.map({t: i for i, t in enumerate("ABCDE")}).to_numpy()
    np.testing.assert_allclose(top["share"], profiles[rows, top["latent"].to_numpy()] ** 2)
    best = np.argmax(profiles, axis=1)
    assert top[top["rank"] == 1].set_index("ticker").latent.tolist() == [best[i] for i in sorted(set(rows))]


def test_company_profiles_are_unit_rows_and_zero_without_specific_latents():
    from peerlens.similarity.company_latents import company_profiles

    profiles = company_profiles(np.array([[1.0, 2.0, 0.0], [1.0, 0.0, 3.0], [1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(np.linalg.norm(profiles[:2], axis=1), 1.0)
    np.testing.assert_array_equal(profiles[2], 0.0)


def test_company_latents_markdown_writes_a_section_per_chosen_company():
    from peerlens.similarity.company_latents import company_latents_markdown, company_top_latents

    # The banks share latent 3, the oil companies latent 6; XOM also has latent 1 to itself.
    features = np.zeros((6, 8))
    features[:3, 3], features[3:5, 6], features[3, 1], features[5, 0] = 5.0, 4.0, 1.0, 1.0
    top = company_top_latents(features, TICKERS, n_latents=2)
    described = pd.DataFrame(
        {"latent": [3], "top_tokens": ["…commercial «loans» | «deposits»"], "top_companies": ["JPM, BAC"]}
    )
    markdown = company_latents_markdown(top, described, ["JPM", "XOM"], names={"JPM": "JPMorgan Chase & Co."})
    assert markdown.count("\n## ") == 2
    assert "## JPM — JPMorgan Chase &amp; Co\\." in markdown and "## XOM\n" in markdown  # names are shown as text
    share = top[(top.ticker == "JPM") & (top["rank"] == 1)].share.item()
    assert f"| 3 | {share:.1%} | …commercial «loans» \\| «deposits» | JPM, BAC |" in markdown
    assert top[top.ticker == "XOM"].latent.tolist() == [6, 1]  # 4 ln 3 > 1 ln 6
    assert "| 6 | " in markdown and "| — | — |" in markdown  # latents 1 and 6 have no description
    with pytest.raises(ValueError, match="no rows"):
        company_latents_markdown(top, described, ["MSFT"])
