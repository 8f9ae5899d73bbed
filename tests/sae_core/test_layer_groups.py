"""Specification of layer angular distances (sae_core.distances) and AMAD groups (sae_core.groups)."""

import json

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from sae_core.activation_store import ActivationStoreWriter
from sae_core.distances import AngularDistanceAccumulator, angular_distances, layer_means, store_distances
from sae_core.groups import (
    LayerGrouping,
    amad,
    choose_layer_groups,
    complete_linkage_groups,
    is_contiguous,
    smallest_g_within_fvu_gap,
)

# ---- angular distances --------------------------------------------------------------------------


def test_identical_opposite_and_orthogonal_layers_are_at_0_1_and_half():
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    orthogonal = torch.zeros(20, 8)
    orthogonal[:, 0], orthogonal[:, 1] = -x[:, 1], x[:, 0]  # rotate the first two coordinates by 90°
    x[:, 2:] = 0  # so the rotation is orthogonal to x itself
    hidden = torch.stack([x, 3.0 * x, -x, orthogonal], dim=1)  # (20 tokens, 4 layers, 8)
    distances = angular_distances(hidden)
    expected = torch.tensor(
        [
            [0.0, 0.0, 1.0, 0.5],
            [0.0, 0.0, 1.0, 0.5],
            [1.0, 1.0, 0.0, 0.5],
            [0.5, 0.5, 0.5, 0.0],
        ]
    )
    torch.testing.assert_close(distances, expected, rtol=0, atol=1e-3)
    assert distances.dtype == torch.float32
    assert torch.equal(distances, distances.T) and torch.all(distances.diagonal() == 0)


def test_distance_is_the_angle_over_pi_averaged_over_tokens():
    # Token 1: layers at 60°; token 2: layers at 120°  →  mean (1/3 + 2/3) / 2 = 0.5.
    angles = torch.tensor([[0.0, torch.pi / 3], [0.0, 2 * torch.pi / 3]])
    hidden = torch.stack([angles.cos(), angles.sin()], dim=2)  # (2 tokens, 2 layers, 2)
    assert angular_distances(hidden)[0, 1].item() == pytest.approx(0.5, abs=1e-5)
    assert angular_distances(hidden[:1])[0, 1].item() == pytest.approx(1 / 3, abs=1e-5)


def test_accumulator_over_two_chunks_equals_one_shot():
    hidden = torch.randn(300, 5, 16, generator=torch.Generator().manual_seed(1))
    accumulator = AngularDistanceAccumulator(n_layers=5)
    accumulator.update(hidden[:120])
    accumulator.update(hidden[120:])
    assert accumulator.n_tokens == 300
    torch.testing.assert_close(accumulator.mean(), angular_distances(hidden), rtol=0, atol=1e-6)


def test_mean_centring_removes_a_shared_offset_that_hides_how_layers_differ():
    generator = torch.Generator().manual_seed(0)
    signal = torch.randn(2000, 16, generator=generator)
    other = torch.randn(2000, 16, generator=generator)
    offset = torch.full((16,), 20.0)  # a large direction every layer shares
    hidden = torch.stack([signal + offset, 2 * signal + offset, other + offset], dim=1)  # (n, 3, d)
    raw = angular_distances(hidden)
    centred = angular_distances(hidden, mean_centred=True)
    assert raw[0, 2] < 0.1  # the offset makes unrelated layers look alike
    assert centred[0, 1] < 0.02 and centred[0, 2] == pytest.approx(0.5, abs=0.02)
    explicit = angular_distances(hidden - hidden.mean(dim=0, keepdim=True))
    torch.testing.assert_close(centred, explicit, atol=1e-4, rtol=0)


def test_layer_means_over_shards_equal_the_whole_mean_and_a_centre_of_the_wrong_shape_is_named():
    hidden = torch.randn(100, 3, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer_means([hidden[:30], hidden[30:]]), hidden.mean(dim=0))
    with pytest.raises(ValueError, match=r"centre must have shape \(n_layers=3, d\)"):
        AngularDistanceAccumulator(3, centre=torch.zeros(2, 8))


def test_half_precision_input_is_computed_in_float32():
    hidden = torch.randn(64, 3, 32, generator=torch.Generator().manual_seed(2))
    result = angular_distances(hidden.half())
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, angular_distances(hidden), rtol=0, atol=2e-3)


def test_bad_hidden_states_raise_value_error():
    with pytest.raises(ValueError, match="n_layers=3"):
        AngularDistanceAccumulator(3).update(torch.randn(4, 2, 8))
    with pytest.raises(ValueError, match="all-zero"):
        angular_distances(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="NaN"):
        angular_distances(torch.full((2, 3, 4), float("nan")))
    with pytest.raises(ValueError, match="update"):
        AngularDistanceAccumulator(3).mean()


# ---- AMAD groups ----------------------------------------------------------------------------------


def planted_blocks() -> np.ndarray:
    """10 layers: blocks {0,1,2}, {3,4,5}, {6,7,8} close inside (0.05–0.1), far across (0.4–0.6),
    and a final layer 9 far from all. The answer at threshold 0.2 is Ĝ = 3."""
    blocks = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    rng = np.random.default_rng(0)
    distances = np.zeros((10, 10))
    for i in range(10):
        for j in range(i + 1, 10):
            same_block = any(i in block and j in block for block in blocks)
            distances[i, j] = distances[j, i] = rng.uniform(0.05, 0.1) if same_block else rng.uniform(0.4, 0.6)
    return distances


def test_planted_blocks_are_recovered_with_the_right_number_of_groups():
    grouping = choose_layer_groups(planted_blocks(), threshold=0.2)
    assert grouping.chosen_g == 3
    assert grouping.chosen_groups == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert grouping.contiguous
    assert grouping.groups_by_g[3] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert set(grouping.groups_by_g) == set(range(1, 10))
    assert all(len(grouping.groups_by_g[g]) == g for g in range(1, 10))
    assert grouping.amad_by_g[2] >= 0.2 > grouping.amad_by_g[3]
    assert grouping.amad_by_g[9] == 0.0


def test_the_final_layer_is_never_grouped():
    distances = planted_blocks()
    distances[9, :9] = distances[:9, 9] = 0.01  # the final layer now sits next to everything
    grouping = choose_layer_groups(distances)
    assert all(9 not in group for groups in grouping.groups_by_g.values() for group in groups)
    assert grouping.chosen_groups[-1] == [9]


def test_amad_is_the_mean_over_groups_of_the_largest_distance_inside():
    distances = planted_blocks()
    groups = [[0, 1, 2], [3], [4, 5, 6]]
    expected = (distances[[0, 1, 2]][:, [0, 1, 2]].max() + 0.0 + distances[[4, 5, 6]][:, [4, 5, 6]].max()) / 3
    assert amad(distances, groups) == pytest.approx(expected)
    assert amad(distances, [[layer] for layer in range(10)]) == 0.0


def test_the_paper_way_differs_from_clustering_the_rows_as_features():
    """Layers on a line at 0.05, 0.23, 0.45, 0.80. On D̄ itself complete linkage merges {0,1} (0.18),
    then {2,3} (0.35 < 0.40 for {0,1}+2). Fed the rows as feature vectors (the authors' code), the
    Euclidean geometry of the rows differs and gives {0,1,2},{3}."""
    positions = np.array([0.05, 0.23, 0.45, 0.80])
    distances = np.abs(positions[:, None] - positions[None, :])
    assert complete_linkage_groups(distances, 2) == [[0, 1], [2, 3]]

    row_distances = pdist(distances, metric="euclidean")
    rows_as_features = fcluster(linkage(row_distances, method="complete"), t=2, criterion="maxclust")
    assert rows_as_features.tolist() == [1, 1, 1, 2]


def test_exactly_g_groups_even_when_distances_tie():
    distances = np.full((5, 5), 0.3)
    np.fill_diagonal(distances, 0.0)
    for g in range(1, 6):
        groups = complete_linkage_groups(distances, g)
        assert len(groups) == g
        assert sorted(layer for group in groups for layer in group) == list(range(5))


def test_groups_are_sorted_and_contiguity_is_reported():
    # Layers 0 and 2 alike, layer 1 different: the best 2 groups are {0,2} and {1}.
    distances = np.array([[0.0, 0.5, 0.05], [0.5, 0.0, 0.5], [0.05, 0.5, 0.0]])
    assert complete_linkage_groups(distances, 2) == [[0, 2], [1]]
    assert not is_contiguous([[0, 2], [1]])
    assert is_contiguous([[0, 1], [2, 3, 4]])
    # Appending a far final layer: Ĝ = 2 with the non-contiguous groups.
    with_final = np.pad(distances, ((0, 1), (0, 1)), constant_values=0.9)
    with_final[3, 3] = 0.0
    grouping = choose_layer_groups(with_final, threshold=0.2)
    assert grouping.chosen_groups == [[0, 2], [1], [3]]
    assert not grouping.contiguous


def test_layer_grouping_round_trips_through_json():
    grouping = choose_layer_groups(planted_blocks())
    restored = LayerGrouping.from_dict(json.loads(json.dumps(grouping.to_dict())))
    assert restored == grouping


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.zeros((3, 4)), "square"),
        (np.array([[0.0, 0.2], [0.3, 0.0]]), "symmetric"),
        (np.array([[0.1, 0.2], [0.2, 0.0]]), "diagonal"),
        (np.array([[0.0, 1.5], [1.5, 0.0]]), r"\[0, 1\]"),
        (np.array([[0.0, np.nan], [np.nan, 0.0]]), "NaN"),
    ],
)
def test_invalid_distance_matrices_raise_value_error(matrix, message):
    with pytest.raises(ValueError, match=message):
        choose_layer_groups(matrix)


def test_invalid_threshold_and_group_count_raise_value_error():
    with pytest.raises(ValueError, match="threshold"):
        choose_layer_groups(planted_blocks(), threshold=0.0)
    with pytest.raises(ValueError, match="n_groups"):
        complete_linkage_groups(planted_blocks(), 11)


def test_the_quality_chooser_takes_the_smallest_g_within_the_fvu_gap_bound_and_names_a_miss():
    gaps = {4: 0.06, 8: 0.025, 12: 0.015, 29: 0.0}
    assert smallest_g_within_fvu_gap(gaps, 0.02) == 12
    assert smallest_g_within_fvu_gap(gaps, 0.1) == 4
    with pytest.raises(ValueError, match="smallest gap is 0.0150 at G = 12"):
        smallest_g_within_fvu_gap({4: 0.06, 12: 0.015}, 0.01)


def test_store_distances_read_the_first_usable_tokens_shard_by_shard(tmp_path):
    writer = ActivationStoreWriter(tmp_path / "store", 3, 8, metadata={"model": "tiny"}, shard_tokens=40)
    hidden = torch.randn(3, 200, 8, generator=torch.Generator().manual_seed(2)) + 4.0
    writer.add(hidden.to(torch.float16), ["A"] * 200, torch.arange(200), torch.zeros(200, dtype=torch.long))
    store = writer.close()
    usable = torch.ones(200, dtype=torch.bool)
    usable[::7] = False
    for centred in (False, True):
        distances, n_tokens = store_distances(store, usable, max_tokens=100, mean_centred=centred)
        # Whole shards are read until 100 usable tokens are in: three shards of 40 here.
        first = usable.clone()
        first[120:] = False
        stacked = torch.stack([store.layer(layer)[first] for layer in range(3)], dim=1)  # (n, L, d)
        assert n_tokens == int(first.sum())
        torch.testing.assert_close(distances, angular_distances(stacked, mean_centred=centred), atol=1e-5, rtol=0)
