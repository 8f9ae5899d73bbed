"""Comparing training regimes: the layer and compute tables, the summary figures, training FLOPs."""

import pytest

from dataclasses import replace

from sae_core.comparison import check_comparable, comparison_summary, compute_table, layer_table
from sae_core.config import SaeConfig, TrainConfig
from sae_core.metrics import training_flops
from sae_core.sae_set import LayerMetrics, SaeSet, TrainedSae

CFG = SaeConfig(d_in=4, expansion_factor=2, k=2)


def entry(layers, fvus, tokens=1000, seconds=1.0):
    metrics = {l: LayerMetrics(fvu=f, l0=2.0, dead_fraction=0.0, n_tokens=10, fvu_with_massive=f) for l, f in zip(layers, fvus)}
    return TrainedSae(tuple(layers), f"saes/{layers[0]}", metrics, seconds, tokens)


def saes(*entries) -> SaeSet:
    return SaeSet(tuple(entries), CFG, TrainConfig(total_tokens=1000), 0.1)


def regimes():
    return {
        "group": saes(entry([0, 1, 2], [0.2, 0.3, 0.4])),
        "per_layer": saes(*[entry([l], [f]) for l, f in enumerate([0.1, 0.2, 0.3])]),
        "transfer": saes(*[entry([l], [f], tokens=100) for l, f in ((1, 0.25), (2, 0.35))]),
    }


def test_a_group_sae_contributes_a_row_for_every_layer_it_serves():
    table = layer_table(regimes())
    assert table[table.regime == "group"].layer.tolist() == [0, 1, 2]
    assert (table[table.regime == "group"].sae == 0).all()
    assert table[table.regime == "per_layer"].sae.tolist() == [0, 1, 2]
    assert len(table) == 3 + 3 + 2


def test_compute_counts_saes_tokens_and_flops_per_regime():
    costs = compute_table(regimes()).set_index("regime")
    assert costs.loc["per_layer", "saes"] == 3 and costs.loc["per_layer", "tokens"] == 3000
    assert costs.loc["group", "flops"] == pytest.approx(training_flops(CFG, 1000))


def test_the_summary_measures_the_saving_of_groups_and_their_fvu_cost():
    table = layer_table(regimes())
    table["ce_loss_score"] = table.regime.map({"group": 0.9, "per_layer": 0.95, "transfer": 0.94})
    summary = comparison_summary(table, compute_table(regimes()))
    assert summary["group_saving_tokens"] == pytest.approx(1 - 1000 / 3000)
    assert summary["group_saving_flops"] == pytest.approx(1 - 1000 / 3000)
    assert summary["group_fvu_gap_mean"] == pytest.approx(0.1)
    assert summary["transfer_token_share"] == pytest.approx(0.1)
    assert summary["transfer_fvu_gap_mean"] == pytest.approx(0.05)
    assert summary["transfer_score_ratio_mean"] == pytest.approx(0.94 / 0.95)


def test_capture_flops_run_every_sae_s_tokens_through_the_model_up_to_its_deepest_layer():
    layer_parameters = [10, 20, 30]  # decoder layers 0, 1, 2
    costs = compute_table(regimes(), layer_parameters).set_index("regime")
    # per layer: 1000 tokens each up to layer 0, 1 and 2; the group: 1000 tokens up to layer 2, once.
    assert costs.loc["per_layer", "capture_flops"] == 2 * 1000 * (10 + 30 + 60)
    assert costs.loc["group", "capture_flops"] == 2 * 1000 * 60
    summary = comparison_summary(layer_table(regimes()), compute_table(regimes(), layer_parameters))
    total = costs.flops + costs.capture_flops
    assert summary["group_saving_flops_with_capture"] == pytest.approx(1 - total["group"] / total["per_layer"])
    assert "group_saving_flops_with_capture" not in comparison_summary(layer_table(regimes()), compute_table(regimes()))


def test_a_group_sae_with_per_layer_saves_names_each_layers_own_and_keeps_it_through_json():
    scaled = replace(entry([0, 1], [0.2, 0.3]), layer_paths={0: "saes/0/layer_0", 1: "saes/0/layer_1"})
    assert scaled.path_for(1) == "saes/0/layer_1" and entry([0, 1], [0.2, 0.3]).path_for(1) == "saes/0"
    assert TrainedSae.from_dict(scaled.to_dict()) == scaled
    with pytest.raises(ValueError, match="serves layers \\[0, 1\\], not 2"):
        scaled.path_for(2)


def test_regimes_with_different_saes_or_holdouts_refuse_to_be_compared():
    different = regimes()
    different["group"] = replace(different["group"], sae_config=SaeConfig(d_in=4, expansion_factor=4, k=2))
    with pytest.raises(ValueError, match="different sae_config"):
        check_comparable(different)
    different = regimes()
    different["per_layer"] = replace(different["per_layer"], holdout_share=0.2)
    with pytest.raises(ValueError, match="different holdout_share"):
        check_comparable(different)
    check_comparable(regimes())


def test_a_set_without_saes_or_a_comparison_without_baseline_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one SAE"):
        saes()
    table = layer_table(regimes())
    with pytest.raises(ValueError, match="no 'per_layer' regime"):
        comparison_summary(table[table.regime != "per_layer"], compute_table(regimes()))


def test_training_flops_follow_the_dense_encoder_and_sparse_decoder_formula():
    topk = SaeConfig(d_in=576, expansion_factor=4, k=32)
    assert training_flops(topk, 10) == 6 * 10 * 576 * (2304 + 32)
    relu = SaeConfig(d_in=576, expansion_factor=4, architecture="relu")
    assert training_flops(relu, 10) == 6 * 10 * 576 * (2304 + 2304)
    with pytest.raises(ValueError, match="tokens"):
        training_flops(topk, -1)


def test_the_spliced_documents_leave_their_massive_positions_unpatched(tmp_path):
    import torch

    from assets.sae_comparison import heldout_documents
    from sae_core.token_split import holdout_mask
    from tests.assets.test_group_saes_config import tiny_store

    store = tiny_store(tmp_path / "store", tokens_per_document=6, documents=10)
    held_out = holdout_mask(store.index.document, 0.3)
    first_held_out = int(held_out.nonzero()[0][0])  # position 0 of the alphabetically first held-out company
    unusable = torch.zeros(store.n_tokens, dtype=torch.bool)
    unusable[[first_held_out, first_held_out + 4]] = True
    documents = heldout_documents(store, 0.3, n_documents=5, max_tokens=4, unusable=unusable)
    name = store.index.document[first_held_out]
    assert min(documents.token_ids) == name
    assert documents.unpatched[name] == [0]  # position 4 lies past the 4 tokens kept
    assert all(len(ids) == 4 for ids in documents.token_ids.values())
    assert not any(documents.unpatched[other] for other in documents.unpatched if other != name)


def test_an_sae_set_round_trips_through_its_json_form_and_finds_the_sae_of_a_layer():
    transfer = replace(regimes()["transfer"], notes={"direction": "forward", "token_fraction": 0.1})
    data = transfer.to_dict()
    assert data["saes"][0]["metrics"] == {"1": {"fvu": 0.25, "l0": 2.0, "dead_fraction": 0.0, "n_tokens": 10, "fvu_with_massive": 0.25}}
    assert data["direction"] == "forward"
    assert SaeSet.from_dict(data) == transfer
    assert regimes()["group"].for_layer(2).layers == (0, 1, 2)
    with pytest.raises(ValueError, match="no SAE of the set serves layer 7"):
        regimes()["group"].for_layer(7)
    with pytest.raises(ValueError, match=r"not an SAE set: \['holdout_share'\] missing"):
        SaeSet.from_dict({k: v for k, v in data.items() if k != "holdout_share"})
