"""Specification of spliced SAE evaluation (sae_core.splice) on a tiny Llama trained in the test.

The model learns a deterministic bigram language (each word is followed by one fixed successor), so
its clean cross-entropy is far below the uniform log(vocab) that zero ablation leaves it with, and the
CE-loss score has a wide, well-defined denominator. No downloads.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import LlamaForCausalLM

from sae_core.capture import LoadedModel, capture_batch, wrap_model
from sae_core.config import SaeConfig, TrainConfig
from sae_core.splice import (
    SplicedEvaluator,
    SplicedMetrics,
    spliced_evaluation,
    spliced_token_losses,
)
from sae_core.train import train_sae
from tests.tiny_models import D_MODEL, N_LAYERS, VOCAB, tiny_llama_config

BOS = 1
LAYER = 1
FIRST_WORD = 2  # ids 0 (unused) and 1 (BOS) are not words
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def successor_table() -> Tensor:
    """successor[w] is the word that always follows w: a fixed random permutation of the words."""
    words = torch.arange(FIRST_WORD, VOCAB)
    table = torch.zeros(VOCAB, dtype=torch.long)
    table[words] = words[torch.randperm(len(words), generator=torch.Generator().manual_seed(7))]
    return table


def bigram_documents(n: int, length: int, seed: int) -> list[list[int]]:
    """n documents of `length` words: a random first word, then each word's successor."""
    successor = successor_table()
    first = torch.randint(FIRST_WORD, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))
    documents = []
    for word in first.tolist():
        document = [word]
        for _ in range(length - 1):
            document.append(int(successor[document[-1]]))
        documents.append(document)
    return documents


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    """A 3-layer Llama trained for a few hundred steps on the bigram language (BOS first)."""
    config = tiny_llama_config(max_position_embeddings=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        batch = torch.tensor([[BOS, *doc] for doc in bigram_documents(32, 12, seed=1000 + step)])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def model_with_bos(llama) -> LoadedModel:
    return wrap_model("tiny-llama", llama, SimpleNamespace(bos_token_id=BOS))


@pytest.fixture(scope="module")
def model_without_bos(llama) -> LoadedModel:
    return wrap_model("tiny-llama", llama, tokenizer=None)


@pytest.fixture(scope="module")
def documents() -> list[list[int]]:
    """Held-out documents of mixed lengths, so batches carry padding."""
    return [doc[: 3 + i % 8] for i, doc in enumerate(bigram_documents(24, 10, seed=1))]


class Reconstruction(NamedTuple):
    sae_out: Tensor


class IdentitySae(nn.Module):
    """A stand-in SAE whose reconstruction is its input; it records what it was shown and in which mode."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[Tensor] = []
        self.modes: list[bool] = []

    def forward(self, x: Tensor) -> Reconstruction:
        self.inputs.append(x.clone())
        self.modes.append(self.training)
        return Reconstruction(sae_out=x)


class ZeroSae(nn.Module):
    """A stand-in SAE that reconstructs every activation as zero."""

    def forward(self, x: Tensor) -> Reconstruction:
        return Reconstruction(sae_out=torch.zeros_like(x))


@pytest.fixture(scope="module")
def trained_sae(model_with_bos):
    """A TopK SAE trained on layer LAYER's activations of documents other than the evaluation ones."""
    captured = capture_batch(model_with_bos, bigram_documents(96, 10, seed=2))
    result = train_sae(
        captured.activations[LAYER],
        SaeConfig(d_in=D_MODEL, expansion_factor=4, k=8),
        TrainConfig(batch_size=128, total_tokens=40_000, dead_tokens_threshold=5_000),
    )
    return result.sae


# --- known answers ----------------------------------------------------------------------------------


def test_the_clean_model_learned_the_language_and_zero_ablation_destroys_it(model_with_bos, documents):
    metrics = spliced_evaluation(model_with_bos, IdentitySae(), LAYER, documents)
    assert metrics.ce_clean < 1.0
    # With its own residual zeroed, a token sees only what attention brings from the unpatched BOS:
    # no better than guessing uniformly among the words.
    assert metrics.ce_zero_ablation > math.log(VOCAB - FIRST_WORD) - 0.5


def test_an_identity_sae_reproduces_the_clean_model(model_with_bos, documents):
    metrics = spliced_evaluation(model_with_bos, IdentitySae(), LAYER, documents)
    assert metrics.ce_sae == metrics.ce_clean
    assert metrics.kl_sae == 0.0
    assert metrics.ce_loss_score == 1.0
    assert metrics.kl_zero > 1.0


def test_a_zero_sae_scores_zero_and_equals_zero_ablation(model_with_bos, documents):
    metrics = spliced_evaluation(model_with_bos, ZeroSae(), LAYER, documents)
    assert metrics.ce_sae == pytest.approx(metrics.ce_zero_ablation, abs=1e-6)
    assert metrics.kl_sae == pytest.approx(metrics.kl_zero, abs=1e-6)
    assert metrics.ce_loss_score == pytest.approx(0.0, abs=1e-6)


def test_a_trained_topk_sae_recovers_most_but_not_all_of_the_loss(model_with_bos, documents, trained_sae):
    metrics = spliced_evaluation(model_with_bos, trained_sae, LAYER, documents)
    assert metrics.ce_clean < metrics.ce_sae < metrics.ce_zero_ablation
    assert 0.5 < metrics.ce_loss_score < 1.0
    assert 0.0 < metrics.kl_sae < metrics.kl_zero
    assert metrics.ce_loss_score == pytest.approx(
        (metrics.ce_zero_ablation - metrics.ce_sae) / (metrics.ce_zero_ablation - metrics.ce_clean)
    )


def test_clean_cross_entropy_is_hugging_faces_without_the_prediction_made_at_bos(llama, model_with_bos):
    ids = bigram_documents(1, 7, seed=3)[0]
    losses = spliced_token_losses(model_with_bos, IdentitySae(), LAYER, [ids])
    with torch.inference_mode():
        logits = llama(input_ids=torch.tensor([[BOS, *ids]])).logits[0]  # (1 + 7, vocab)
    # Position 0 (BOS) predicts ids[0]: excluded. Positions 1..6 predict ids[1..6].
    expected = F.cross_entropy(logits[1:-1], torch.tensor(ids[1:]), reduction="none")
    torch.testing.assert_close(losses.ce_clean, expected, atol=ATOL, rtol=0)
    assert losses.position.tolist() == [1, 2, 3, 4, 5, 6]
    assert losses.document.tolist() == [0] * 6


def test_every_document_contributes_its_length_minus_one_predictions(model_with_bos, model_without_bos):
    docs = [[10, 11, 12, 13, 14], [20, 21, 22], [30]]
    for model in (model_with_bos, model_without_bos):
        assert spliced_evaluation(model, IdentitySae(), LAYER, docs).n_tokens == 4 + 2 + 0


# --- which positions are patched --------------------------------------------------------------------


def test_the_sae_sees_exactly_the_text_tokens_that_capture_stores(model_with_bos):
    docs = [[10, 11, 12, 13, 14], [20, 21]]  # the second is padded; BOS leads both
    sae = IdentitySae()
    spliced_token_losses(model_with_bos, sae, LAYER, docs)
    assert len(sae.inputs) == 1
    stored = capture_batch(model_with_bos, docs).activations[LAYER]  # (7, d): no BOS, no padding
    torch.testing.assert_close(sae.inputs[0], stored, atol=ATOL, rtol=0)


def test_unpatched_positions_are_left_as_they_are_and_not_scored(model_with_bos):
    docs = [[10, 11, 12, 13, 14], [20, 21, 22]]
    sae = IdentitySae()
    evaluator = SplicedEvaluator(model_with_bos, docs, unpatched=[[0, 3], []])
    evaluator.evaluate(LAYER, {"identity": sae})
    assert evaluator.n_predictions == (4 - 2) + 2
    stored = capture_batch(model_with_bos, docs).activations[LAYER]  # rows 0..4 are document 0
    patched = stored[[1, 2, 4, 5, 6, 7]]
    # The evaluator batches by length: compare the rows in one order, by their first coordinate.
    torch.testing.assert_close(
        sae.inputs[0][sae.inputs[0][:, 0].argsort()], patched[patched[:, 0].argsort()], atol=ATOL, rtol=0
    )


@pytest.mark.parametrize(("unpatched", "message"), [([[0]], "1 entries for 2 documents"), ([[5], []], "outside 0..4")])
def test_unpatched_positions_outside_the_documents_are_refused(model_with_bos, unpatched, message):
    with pytest.raises(ValueError, match=message):
        SplicedEvaluator(model_with_bos, [[10, 11, 12, 13, 14], [20, 21, 22]], unpatched=unpatched)


def test_without_bos_every_token_is_patched(model_without_bos):
    docs = [[10, 11, 12], [20, 21, 22, 23]]
    sae = IdentitySae()
    spliced_token_losses(model_without_bos, sae, LAYER, docs)
    torch.testing.assert_close(sae.inputs[0], capture_batch(model_without_bos, docs).activations[LAYER])


def test_the_sae_runs_in_eval_mode_and_keeps_its_training_flag(model_with_bos, documents):
    sae = IdentitySae().train()
    spliced_evaluation(model_with_bos, sae, LAYER, documents[:3])
    assert sae.modes and not any(sae.modes)
    assert sae.training


def test_the_layer_hooks_are_removed_afterwards(model_with_bos, documents, trained_sae):
    hooks_before = [dict(layer._forward_hooks) for layer in model_with_bos.layers]
    spliced_evaluation(model_with_bos, trained_sae, LAYER, documents[:3])
    assert [dict(layer._forward_hooks) for layer in model_with_bos.layers] == hooks_before


# --- padding and batching ---------------------------------------------------------------------------


@pytest.mark.parametrize("loaded", ["model_with_bos", "model_without_bos"])
def test_a_document_has_the_same_token_losses_alone_and_beside_a_longer_one(loaded, request, trained_sae):
    model = request.getfixturevalue(loaded)
    short, long = bigram_documents(2, 9, seed=4)
    short = short[:4]
    alone = spliced_token_losses(model, trained_sae, LAYER, [short])
    together = spliced_token_losses(model, trained_sae, LAYER, [short, long])
    mine = together.document == 0
    assert together.position[mine].tolist() == alone.position.tolist()
    for field in ("ce_clean", "ce_sae", "ce_zero_ablation", "kl_sae", "kl_zero"):
        torch.testing.assert_close(getattr(together, field)[mine], getattr(alone, field), atol=ATOL, rtol=0)


def test_batch_size_does_not_change_the_metrics(model_with_bos, documents, trained_sae):
    one_batch = spliced_evaluation(model_with_bos, trained_sae, LAYER, documents, batch_tokens=10_000)
    many_batches = spliced_evaluation(model_with_bos, trained_sae, LAYER, documents, batch_tokens=16)
    assert many_batches.n_tokens == one_batch.n_tokens
    for name, value in one_batch.to_dict().items():
        assert getattr(many_batches, name) == pytest.approx(value, abs=1e-5), name


def test_one_evaluator_scores_many_saes_and_layers_as_separate_evaluations_would(model_with_bos, documents, trained_sae):
    evaluator = SplicedEvaluator(model_with_bos, documents, batch_tokens=64)
    for layer in (LAYER, 0):  # the clean run cached for the first layer serves the second
        together = evaluator.evaluate(layer, {"trained": trained_sae, "identity": IdentitySae(), "zeros": ZeroSae()})
        for name, sae in (("trained", trained_sae), ("identity", IdentitySae()), ("zeros", ZeroSae())):
            alone = spliced_evaluation(model_with_bos, sae, layer, documents)
            for field, value in alone.to_dict().items():
                assert getattr(together[name], field) == pytest.approx(value, abs=1e-5), (layer, name, field)
    assert together["identity"].ce_loss_score == pytest.approx(1.0, abs=1e-5)
    assert together["zeros"].ce_loss_score == pytest.approx(0.0, abs=1e-5)


def test_an_evaluator_refuses_no_saes_and_the_reserved_name_zero(model_with_bos, documents):
    evaluator = SplicedEvaluator(model_with_bos, documents[:2])
    with pytest.raises(ValueError, match="saes is empty"):
        evaluator.evaluate(LAYER, {})
    with pytest.raises(ValueError, match="'zero'"):
        evaluator.evaluate(LAYER, {"zero": IdentitySae()})


def test_metrics_serialise_to_a_flat_dict(model_with_bos, documents):
    metrics = spliced_evaluation(model_with_bos, IdentitySae(), LAYER, documents[:4])
    as_dict = metrics.to_dict()
    assert set(as_dict) == {
        "ce_clean", "ce_sae", "ce_zero_ablation", "ce_loss_score", "kl_sae", "kl_zero", "n_tokens"
    }
    assert SplicedMetrics(**as_dict) == metrics


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [-1, N_LAYERS, 1.0])
def test_a_layer_out_of_range_raises_value_error_naming_the_range(model_with_bos, documents, layer):
    with pytest.raises(ValueError, match=rf"0\.\.{N_LAYERS - 1}"):
        spliced_evaluation(model_with_bos, IdentitySae(), layer, documents)


def test_the_score_is_undefined_when_zero_ablation_changes_nothing(llama, documents):
    deaf = copy.deepcopy(llama)
    with torch.no_grad():
        deaf.lm_head.weight.zero_()  # every run now predicts the uniform distribution
    model = wrap_model("deaf-llama", deaf, SimpleNamespace(bos_token_id=BOS))
    with pytest.raises(ValueError, match="undefined"):
        spliced_evaluation(model, IdentitySae(), LAYER, documents)


@pytest.mark.parametrize(
    ("token_ids", "message"),
    [
        ([], "at least one document"),
        ([[10, 11], []], "document 1 has no tokens"),
        ([[10, VOCAB]], rf"document 0 .* 0\.\.{VOCAB - 1}"),
        ([[10, -1]], "document 0"),
        ([[10], [11]], "no next token"),
    ],
)
def test_bad_documents_raise_value_error(model_with_bos, token_ids, message):
    with pytest.raises(ValueError, match=message):
        spliced_evaluation(model_with_bos, IdentitySae(), LAYER, token_ids)


def test_a_model_without_its_causal_lm_is_rejected(model_with_bos, documents):
    headless = copy.copy(model_with_bos)
    headless.causal_lm = None
    with pytest.raises(ValueError, match="no causal LM"):
        spliced_evaluation(headless, IdentitySae(), LAYER, documents)


class DoubledLogits(nn.Module):
    """A causal LM whose forward scales the logits after the head, as logit soft-capping would."""

    def __init__(self, llama: LlamaForCausalLM) -> None:
        super().__init__()
        self.model, self.lm_head, self.config = llama.model, llama.lm_head, llama.config

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, input_ids: Tensor, **kwargs) -> SimpleNamespace:
        return SimpleNamespace(logits=2 * self.lm_head(self.model(input_ids=input_ids, **kwargs).last_hidden_state))


def test_a_model_whose_logits_are_not_its_head_of_its_base_is_rejected(llama, documents):
    model = wrap_model("scaled-llama", DoubledLogits(llama), SimpleNamespace(bos_token_id=BOS))
    with pytest.raises(ValueError, match="does not reproduce"):
        spliced_evaluation(model, IdentitySae(), LAYER, documents)


def test_a_reconstruction_with_nan_is_rejected(model_with_bos, documents):
    class NanSae(nn.Module):
        def forward(self, x: Tensor) -> Reconstruction:
            return Reconstruction(sae_out=torch.full_like(x, float("nan")))

    with pytest.raises(ValueError, match=f"layer {LAYER} contains NaN"):
        spliced_evaluation(model_with_bos, NanSae(), LAYER, documents)

