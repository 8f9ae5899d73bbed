"""A new filing costs one language-model pass over its own text: the new day's partition of llm_activations
is captured alone, with a model that counts the tokens it is run on, and the corpus combines the days.
A day's store is reused and combined only under the window settings it was captured with."""

from __future__ import annotations

import pandas as pd
import torch
import pytest
from dagster import DagsterInstance, asset, materialize
from transformers import LlamaForCausalLM

from assets.activations import activation_corpus, llm_activations
from assets.partitions import TEXT_DATES
from assets.sources import daily_texts
from peerlens.sources.texts import append_texts, text_days, texts_from_records
from resources import ArtifactStorage, ComputeResource, LanguageModelResource, TableIOManager
from sae_core.activation_store import ActivationStore
from sae_core.capture import LoadedModel, wrap_model
from tests.sae_core.test_capture import word_tokenizer
from tests.tiny_models import tiny_llama_config

TOKENS_SEEN: list[int] = []
"""Tokens (padding included) in every forward pass of the counting model, appended by its hook."""


class CountingLanguageModel(LanguageModelResource):
    """The tiny Llama with a forward hook that records how many tokens each pass runs over."""

    def load(self, device: str) -> LoadedModel:
        torch.manual_seed(0)
        llama = LlamaForCausalLM(tiny_llama_config()).eval()
        llama.model.register_forward_pre_hook(
            lambda module, args, kwargs: TOKENS_SEEN.append(int(kwargs["input_ids"].numel())), with_kwargs=True
        )
        return wrap_model(self.name, llama, word_tokenizer())


def texts(*rows: tuple[str, str, str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["ticker", "description", "known_by"])
    return texts_from_records(frame.assign(cik=None, name=frame.ticker, source="test@" + frame.known_by), "test")


FIRST = texts(("BANK", "the bank sells loans", "2017-01-02"), ("CARS", "the car sells cars", "2017-01-02"))
FILING = texts(("BANK", "the bank sells loans loans loans the bank", "2018-03-01"))


def materialize_day(history: pd.DataFrame, day: str, root, instance, **reading) -> tuple[dict, dict]:
    """Run the texts of `day` through daily_texts and llm_activations, then combine the corpus; `reading`:
    the model's window, stride, max_document_tokens (default: the resource's).

    Returns the corpus manifest and the llm_activations materialization's metadata."""

    @asset(name="company_descriptions")
    def history_asset() -> pd.DataFrame:
        return history

    instance.add_dynamic_partitions(TEXT_DATES.name, [d for d in text_days(history) if not instance.has_dynamic_partition(TEXT_DATES.name, d)])
    resources = {
        "io_manager": TableIOManager(root=str(root)),
        "artifacts": ArtifactStorage(root=str(root)),
        "language_model": CountingLanguageModel(name="counting-tiny-llama", **reading),
        "compute": ComputeResource(device="cpu"),
    }
    assets = [history_asset, daily_texts, llm_activations, activation_corpus]
    result = materialize(assets, resources=resources, instance=instance, partition_key=day)
    assert result.success
    metadata = result.asset_materializations_for_node("llm_activations")[0].metadata
    return result.output_for_node("activation_corpus"), {k: v.value for k, v in metadata.items()}


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as instance:
        yield instance


def test_one_new_filing_costs_one_model_pass_over_its_own_text_only(tmp_path, instance):
    TOKENS_SEEN.clear()
    first, first_metadata = materialize_day(FIRST, "2017-01-02", tmp_path, instance)
    assert first_metadata["texts_captured"] == 2 and first_metadata["texts_reused"] == 0
    before = ActivationStore(tmp_path / first.folder)
    old_index, old_layer = before.index, before.layer(1)
    first_day = ActivationStore(tmp_path / "artifacts" / "llm_activations" / "2017-01-02").manifest["store_id"]

    TOKENS_SEEN.clear()
    grown = append_texts(FIRST, FILING).history
    second, metadata = materialize_day(grown, "2018-03-01", tmp_path, instance)
    # One pass, over the filing's BOS and its eight words: nothing already held is run again.
    words = len(FILING.description.item().split())
    assert TOKENS_SEEN == [1 + words]
    assert metadata["texts_captured"] == 1 and metadata["partitions"] == 1
    assert metadata["tokens_through_the_model"] == words  # BOS is run, never stored
    # The day before is a partition of its own, not rewritten.
    assert ActivationStore(tmp_path / "artifacts" / "llm_activations" / "2017-01-02").manifest["store_id"] == first_day

    after = ActivationStore(tmp_path / second.folder)
    index = after.index
    assert set(index.document) == set(grown.text_id)
    assert [part["folder"].split("/")[-1] for part in after.manifest["parts"]] == ["2017-01-02", "2018-03-01"]
    for text_id in FIRST.text_id:  # the corpus reads the first day's tokens bit for bit as they were stored
        was, now = old_index.document == text_id, index.document == text_id
        assert torch.equal(old_layer[torch.from_numpy(was.to_numpy())], after.layer(1)[torch.from_numpy(now.to_numpy())])

    TOKENS_SEEN.clear()
    _, again = materialize_day(grown, "2018-03-01", tmp_path, instance)
    assert TOKENS_SEEN == [] and again["texts_reused"] == 1  # nothing new: the model is not even loaded


def test_a_different_cap_captures_everything_again(tmp_path, instance):
    materialize_day(FIRST, "2017-01-02", tmp_path, instance)
    TOKENS_SEEN.clear()
    _, metadata = materialize_day(FIRST, "2017-01-02", tmp_path, instance, max_document_tokens=3)
    assert metadata["texts_captured"] == 2 and sum(TOKENS_SEEN) > 0
    assert metadata["texts_cut_at_max_document_tokens"] == 2 and metadata["tokens"] == 2 * 3


def test_a_long_text_is_read_whole_in_windows_that_the_day_store_records(tmp_path, instance):
    TOKENS_SEEN.clear()
    _, metadata = materialize_day(FILING, "2018-03-01", tmp_path, instance, window=4, stride=2)
    # Eight words in windows of 4 advancing by 2: [0, 4) [2, 6) [4, 8), each behind its BOS.
    assert TOKENS_SEEN == [3 * 5]  # one padded batch of three windows
    assert metadata["tokens"] == 8 and metadata["tokens_through_the_model"] == 12
    assert metadata["windows"] == 3 and metadata["texts_read_in_windows"] == 1
    assert metadata["texts_cut_at_max_document_tokens"] == 0
    day = ActivationStore(tmp_path / "artifacts" / "llm_activations" / "2018-03-01")
    assert day.manifest["capture"] == {"window": 4, "stride": 2, "max_document_tokens": None}
    assert sorted(day.index.position) == list(range(8))


def test_a_store_captured_with_other_windows_is_captured_again_not_reused(tmp_path, instance):
    materialize_day(FILING, "2018-03-01", tmp_path, instance, window=4, stride=2)
    TOKENS_SEEN.clear()
    _, same = materialize_day(FILING, "2018-03-01", tmp_path, instance, window=4, stride=2)
    assert TOKENS_SEEN == [] and same["texts_reused"] == 1
    # Any difference counts, even one that would read this short text alike (a cap it never reaches).
    others = ({"window": 4, "stride": 3}, {"window": 8, "stride": 2}, {"window": 4, "stride": 2, "max_document_tokens": 100})
    for other in others:
        TOKENS_SEEN.clear()
        _, metadata = materialize_day(FILING, "2018-03-01", tmp_path, instance, **other)
        assert metadata["texts_captured"] == 1 and metadata["texts_reused"] == 0 and sum(TOKENS_SEEN) > 0, other


def test_days_captured_with_other_windows_are_not_combined_into_one_corpus(tmp_path, instance):
    materialize_day(FIRST, "2017-01-02", tmp_path, instance)
    # The day is captured with windows of 4; the corpus refuses to put it beside the day read otherwise.
    with pytest.raises(ValueError, match=r"cannot combine .*'window': 4, 'stride': 2.* with "):
        materialize_day(append_texts(FIRST, FILING).history, "2018-03-01", tmp_path, instance, window=4, stride=2)


@pytest.mark.parametrize(
    ("reading", "named"),
    [
        ({"window": 4, "stride": 5}, r"stride \(5\) must not exceed window \(4\)"),
        ({"window": 1, "stride": 1}, "window must be at least 2"),
        ({"max_document_tokens": 0}, "max_document_tokens must be positive"),
    ],
)
def test_a_window_setting_that_cannot_read_a_text_fails_the_capture_naming_it_before_any_model_pass(
    tmp_path, instance, reading, named
):
    TOKENS_SEEN.clear()
    with pytest.raises(ValueError, match=named):
        materialize_day(FIRST, "2017-01-02", tmp_path, instance, **reading)
    assert TOKENS_SEEN == [] and not (tmp_path / "artifacts" / "llm_activations" / "2017-01-02").exists()
