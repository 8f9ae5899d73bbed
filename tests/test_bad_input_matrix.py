"""Bad input, one test per kind: each ends in an error naming the input (file, row, ticker, URL) or in rows
dropped and counted in the asset's metadata, and nothing already stored is lost.

The README's bad-input table lists every kind with the test that proves it; the kinds a user's own universe
file brings (blank or undecodable descriptions, duplicate ids, misnamed columns, bad dates) are proven
beside its loader. Tiny models built here, no network.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import requests
import torch
from dagster import AssetSpec, DagsterInstance, RetryRequested, materialize
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    BertConfig, BertModel, LlamaForCausalLM, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration,
)

import assets.sources
from assets.activations import llm_activations
from assets.clusters import CompanyClustersConfig, current_company_clusters
from assets.partitions import TEXT_DATES
from assets.sources import company_descriptions, daily_prices, monthly_returns
from definitions import resources_from_environment
from peerlens.similarity.point_in_time import universe_as_of
from peerlens.sources.edgar import EdgarClient, EdgarError, EdgarRefused, extract_item1_business
from peerlens.sources.returns import clean_daily_prices, month_end_log_returns
from peerlens.sources.sample import LoadedTable
from peerlens.sources.texts import texts_from_records
from resources import ArtifactStorage, ComputeResource, EdgarResource, LanguageModelResource, TableIOManager
from sae_core.activation_stream import StoreRows
from sae_core.activation_store import ActivationStore, ActivationStoreWriter
from sae_core.capture import load_model
from sae_core.checkpoint import CHECKPOINT_FILENAME
from sae_core.config import SaeConfig, TrainConfig
from sae_core.io import load_sae, save_sae
from sae_core.release import load_release
from sae_core.sae import TopKSae
from sae_core.store_combine import combine_stores, copy_documents
from sae_core.train import train_sae
from tests.peerlens.sources.test_edgar import USER_AGENT, FakeResponse, FakeSession, FakeTime, make_client
from tests.peerlens.sources.test_returns import daily_rows
from tests.peerlens.sources.test_yfinance_prices import AAPL, BRK_B, yahoo_frame
from tests.tiny_models import tiny_llama_config

DAY = "2017-05-18"
ONE_MEGABYTE = "The bank lends money to companies and households. " * 20_972  # 1,048,600 bytes
NON_ENGLISH = "トヨタ自動車は自動車を製造・販売する日本の企業です。Société Générale est une banque française."


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """SmolLM2's kind of tokenizer without its merges: every byte of any script is a token, none is unknown."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={"<s>": 0, **{char: i + 1 for i, char in enumerate(alphabet)}}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>")


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> dict[str, str]:
    """Saved model folders, each with the byte-level tokenizer: a causal LM (tiny Llama), an encoder (BERT) and a
    sequence-to-sequence model (T5)."""
    root, tokenizer = tmp_path_factory.mktemp("models"), byte_level_tokenizer()
    config = tiny_llama_config()
    config.vocab_size = 300
    torch.manual_seed(0)
    models_by_name = {
        "llama": LlamaForCausalLM(config),
        "bert": BertModel(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64)),
        "t5": T5ForConditionalGeneration(
            T5Config(vocab_size=300, d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16)
        ),
    }
    for name, model in models_by_name.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return {name: str(root / name) for name in models_by_name}


def metadata_of(result, asset: str) -> dict:
    """The values of `asset`'s materialization metadata in a run `result`."""
    return {key: value.value for key, value in result.asset_materializations_for_node(asset)[0].metadata.items()}


def capture_day(root, model_folder: str, instance):
    """llm_activations of DAY over a 1 MB English text and a Japanese-French one, read in 64-token windows capped
    at 256 tokens per text, by the model saved in `model_folder`."""
    texts = pd.DataFrame({"text_id": ["ticker:BIG|s", "ticker:JPN|s"], "company_id": ["ticker:BIG", "ticker:JPN"],
                          "ticker": ["BIG", "JPN"], "description": [ONE_MEGABYTE, NON_ENGLISH],
                          "known_by": pd.to_datetime([DAY, DAY])})
    (root / "tables" / "daily_texts").mkdir(parents=True, exist_ok=True)
    texts.to_parquet(root / "tables" / "daily_texts" / f"{DAY}.parquet")
    model = LanguageModelResource(name=model_folder, window=64, stride=48, max_document_tokens=256)
    return materialize(
        [AssetSpec("daily_texts", partitions_def=TEXT_DATES), llm_activations],
        resources={"io_manager": TableIOManager(root=str(root)), "artifacts": ArtifactStorage(root=str(root)),
                   "language_model": model, "compute": ComputeResource(device="cpu")},
        selection=["llm_activations"], partition_key=DAY, instance=instance, raise_on_error=False,
    )


@pytest.fixture(scope="module")
def captured(tmp_path_factory, model_folders):
    root = tmp_path_factory.mktemp("capture")
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(TEXT_DATES.name, [DAY])
        result = capture_day(root, model_folders["llama"], instance)
        assert result.success
        store = ActivationStore(root / "artifacts" / "llm_activations" / DAY)
        yield root, instance, metadata_of(result, "llm_activations"), store


# --- the text → token path ------------------------------------------------------------------------


def test_a_1_mb_description_is_cut_at_max_document_tokens_and_counted(captured):
    _, _, metadata, store = captured
    assert len(ONE_MEGABYTE.encode()) > 2**20
    assert metadata["texts_cut_at_max_document_tokens"] == 1 and metadata["texts_read_in_windows"] == 2
    big = store.index[store.index.document == "ticker:BIG|s"]
    assert sorted(big.position) == list(range(256))  # its first 256 tokens, each once; nothing past the cap


def test_a_non_english_description_is_stored_byte_for_byte_and_not_cut(captured):
    _, _, metadata, store = captured
    rows = store.index[store.index.document == "ticker:JPN|s"].sort_values("position")
    assert metadata["tokens"] == 256 + len(NON_ENGLISH.encode())  # every UTF-8 byte is a token
    assert byte_level_tokenizer().decode(rows.token_id.tolist()) == NON_ENGLISH


def test_a_model_that_is_not_a_causal_lm_fails_naming_it_and_keeps_the_stored_day(captured, model_folders):
    root, instance, _, store = captured
    result = capture_day(root, model_folders["bert"], instance)
    message = result.failure_data_for_node("llm_activations").error.cause.message
    assert model_folders["bert"] in message and "not a decoder-only causal LM" in message
    assert ActivationStore(store.folder).manifest["store_id"] == store.manifest["store_id"]


def test_a_seq2seq_model_folder_is_refused_naming_it(model_folders):
    with pytest.raises(ValueError, match=rf"{model_folders['t5']}.*does not hold a causal language model"):
        load_model(model_folders["t5"])


# --- HTML -----------------------------------------------------------------------------------------


def test_html_of_a_10k_is_stripped_to_the_text_a_reader_sees():
    html = ("<html><head><style>p {color: red}</style><script>var tag = '<b>';</script></head><body>"
            "<div style='display:none'><ix:header>us-gaap:Revenues 1000</ix:header></div>"
            "<p><b>Item 1. Business</b></p><p>Acme&nbsp;makes <i>widgets</i> &amp; gadgets.<br>"
            + "It sells them worldwide. " * 10 + "</p><p>Item 1A. Risk Factors</p></body></html>")
    text = extract_item1_business(html, "acme-10k.htm")
    assert text.startswith("Acme makes widgets & gadgets.\nIt sells them")
    assert not any(markup in text for markup in ("<", "color", "var tag", "us-gaap", "&amp;", "\u00a0"))


def test_html_in_a_loaded_description_is_kept_verbatim():
    """Only the EDGAR path strips markup; a loader's description reaches the model as given."""
    frame = pd.DataFrame({"cik": [1], "ticker": ["ACME"], "name": ["Acme"], "source": ["vendor@2017"],
                          "description": ["<p>Acme makes <b>widgets</b>.</p>"], "known_by": [DAY]})
    assert texts_from_records(frame, "vendor file").description.item() == "<p>Acme makes <b>widgets</b>.</p>"


# --- tickers reused over time ---------------------------------------------------------------------


def test_a_reused_ticker_names_the_company_whose_latest_text_is_newer():
    frame = pd.DataFrame({"cik": [11, 22, 33], "ticker": ["XYZ", "XYZ", "ABC"], "name": ["Old", "New", "Abc"],
                          "description": ["Old Co mines coal.", "New Co sells software.", "Abc bakes bread."],
                          "source": ["edgar:old", "edgar:new", "edgar:abc"],
                          "known_by": ["2014-03-01", "2019-03-01", "2014-03-01"]})
    texts = texts_from_records(frame, "filings")
    assert texts.company_id.tolist() == ["cik:11", "cik:22", "cik:33"]  # one ticker, two companies
    before = universe_as_of(texts, "2016-01-01").set_index("ticker").company_id
    after = universe_as_of(texts, "2020-01-01").set_index("ticker").company_id
    assert before["XYZ"] == "cik:11" and after["XYZ"] == "cik:22" and len(after) == 2


# --- prices ---------------------------------------------------------------------------------------


def test_rows_the_price_source_leaves_out_are_counted_and_named_in_daily_prices_metadata(tmp_path, monkeypatch):
    """The 2017 sample drops the series of tickers a later company took (`REUSED_PRICE_TICKERS`): the count and
    the tickers reach daily_prices' metadata beside the cleaning rules'."""
    dates = ["2020-01-02", "2020-01-03"]
    loaded = LoadedTable(daily_rows("GOOD", dates, [10, 10.1]), {"reused_ticker_rows_dropped": 7},
                         {"reused_ticker_rows_dropped": ["DOW", "IR"]})
    environment = {**resources_from_environment(), "io_manager": TableIOManager(root=str(tmp_path))}
    monkeypatch.setattr(type(environment["company_data"]), "daily_prices", lambda self: loaded)
    metadata = metadata_of(materialize([daily_prices], resources=environment), "daily_prices")
    assert metadata["rule/reused_ticker_rows_dropped"] == 7 and metadata["reused_ticker_rows_dropped_tickers"] == "DOW, IR"
    assert metadata["rule/rows_out"] == 2


def test_nan_zero_and_negative_closes_are_dropped_and_counted_in_daily_prices_metadata(tmp_path, monkeypatch):
    dates = ["2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07"]
    raw = pd.concat([daily_rows("GOOD", dates, [10, 10.1, 10.2, 10.3]), daily_rows("BAD", dates, [5, np.nan, 0, -5])])
    environment = {**resources_from_environment(), "io_manager": TableIOManager(root=str(tmp_path))}
    monkeypatch.setattr(type(environment["company_data"]), "daily_prices", lambda self: LoadedTable(raw.reset_index(drop=True), {}))
    result = materialize([daily_prices], resources=environment)
    metadata = metadata_of(result, "daily_prices")
    assert metadata["rule/null_close_dropped"] == 1 and metadata["rule/nonpositive_close_dropped"] == 2
    assert metadata["rule/rows_out"] == 5
    assert all(check.passed for check in result.get_asset_check_evaluations())  # prices_are_positive_and_dated


def test_a_gap_of_days_changes_no_return_and_a_missing_month_is_nan_not_a_jump():
    dates = ["2020-01-31", "2020-02-03", "2020-02-28", "2020-04-30"]  # Feb 4-27 and all of March missing
    returns = month_end_log_returns(clean_daily_prices(daily_rows("GAP", dates, [10.0, 10.5, 11.0, 12.0])).prices)
    by_month = returns.set_index("month")
    assert by_month.loc["2020-02", "log_return"] == pytest.approx(np.log(11 / 10))
    assert np.isnan(by_month.loc["2020-04", "log_return"]) and not by_month.loc["2020-04", "jump_in_month"]


def test_a_missing_month_is_counted_in_monthly_returns_metadata(tmp_path, monkeypatch):
    dates = ["2020-01-31", "2020-02-28", "2020-04-30", "2020-05-29"]  # no close in March
    full = sorted([*dates, "2020-03-31"])
    gapped = pd.concat([daily_rows("GAP", dates, [10.0, 11.0, 12.0, 12.5]), daily_rows("FULL", full, [5, 5, 5, 5, 5])])
    environment = {**resources_from_environment(), "io_manager": TableIOManager(root=str(tmp_path))}
    monkeypatch.setattr(type(environment["company_data"]), "daily_prices", lambda self: LoadedTable(gapped, {}))
    assert materialize([daily_prices], resources=environment).success
    result = materialize([daily_prices, monthly_returns], resources=environment, selection=[monthly_returns],
                         partition_key="2020-04-01")
    assert metadata_of(result, "monthly_returns")["nan_returns_from_missing_months"] == 1  # GAP's April


# --- a universe of one ----------------------------------------------------------------------------


def one_company_inputs() -> dict[str, pd.DataFrame]:
    text = texts_from_records(pd.DataFrame({"cik": [7], "ticker": ["ONLY"], "name": ["Only"], "source": ["s"],
                                            "description": ["Only Co makes everything."], "known_by": [DAY]}), "one")
    codes = {column: ["x"] for column in ("sic4", "sic2", "sic_division", "gics_sector", "gics_sub_industry")}
    return {
        "company_features": pd.DataFrame({"text_id": text.text_id, "latent": [3], "value": [1.0]}),
        "text_embeddings": pd.DataFrame({"text_id": text.text_id, **{f"e{i}": [float(i == 0)] for i in range(384)}}),
        "company_descriptions": text,
        "industry_codes": pd.DataFrame({"ticker": ["ONLY"], **codes}),
        "index_membership": pd.DataFrame({"ticker": pd.Series(dtype=str), "start_date": pd.Series(dtype="M8[ns]"),
                                          "end_date": pd.Series(dtype="M8[ns]")}),
        "daily_prices": pd.DataFrame({"ticker": ["ONLY"], "date": pd.to_datetime(["2017-01-03"])}),
    }


def test_a_universe_of_one_company_gets_no_clustering_and_an_error_naming_min_companies():
    with pytest.raises(ValueError, match="fewer than 10 companies"):
        current_company_clusters(CompanyClustersConfig(), **one_company_inputs())
    with pytest.raises(ValueError, match="min_companies must be at least 2.*got 1"):
        current_company_clusters(CompanyClustersConfig(min_companies=1), **one_company_inputs())


# --- activation shards ----------------------------------------------------------------------------


def small_store(folder, nan: bool = False) -> ActivationStore:
    writer = ActivationStoreWriter(folder, n_layers=2, d_model=4, shard_tokens=4)
    activations = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0))
    if nan:
        activations[1, 5, 2] = float("nan")
    writer.add(activations, ["A"] * 3 + ["B"] * 3, torch.tensor([0, 1, 2, 0, 1, 2]), torch.arange(6))
    return writer.close()


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_shard_is_an_error_naming_it_on_every_read_path(tmp_path, damage):
    store = small_store(tmp_path / "store")
    shard = store.folder / store.manifest["shards"][1]
    whole = shard.read_bytes()
    shard.write_bytes(whole[: len(whole) // 2] if damage == "truncated" else b"\x00" * len(whole))
    reads = {
        "layer": lambda: store.layer(0),
        "iter_shards": lambda: list(store.iter_shards()),
        "training rows": lambda: StoreRows(store, [1], torch.ones(6, dtype=torch.bool)).materialize(),
        "copy": lambda: copy_documents(store, {"B"}, ActivationStoreWriter(tmp_path / f"copy-{damage}", 2, 4)),
        "combined": lambda: combine_stores([store], tmp_path / "corpus").layer(1),
    }
    for read in reads.values():
        with pytest.raises(ValueError, match=rf"{shard}.*not a readable safetensors file.*capture it again"):
            read()


def test_a_cut_store_manifest_is_an_error_naming_it(tmp_path):
    store = small_store(tmp_path / "store")
    manifest = store.folder / "store.json"
    manifest.write_text(manifest.read_text()[:40])
    with pytest.raises(ValueError, match=rf"{manifest} is not valid JSON"):
        ActivationStore(store.folder)


# --- SAE files ------------------------------------------------------------------------------------


@pytest.fixture
def saved_sae(tmp_path):
    return save_sae(TopKSae(SaeConfig(d_in=8, expansion_factor=2, k=2), generator=torch.Generator()), tmp_path / "sae")


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_sae_weights_file_is_an_error_naming_it_and_left_as_it_is(saved_sae, damage):
    weights = saved_sae / "sae_weights.safetensors"
    whole = weights.read_bytes()
    damaged = whole[: len(whole) // 2] if damage == "truncated" else bytes(reversed(whole))
    weights.write_bytes(damaged)
    with pytest.raises(ValueError, match=rf"{weights} is not a readable safetensors file"):
        load_sae(saved_sae)
    assert weights.read_bytes() == damaged


def test_a_cut_sae_config_is_an_error_naming_it(saved_sae):
    cfg = saved_sae / "cfg.json"
    cfg.write_text(cfg.read_text()[:30])
    with pytest.raises(ValueError, match=rf"{cfg} is not valid JSON"):
        load_sae(saved_sae)


def test_a_cut_release_record_is_an_error_naming_it_and_how_to_replace_it(tmp_path):
    (tmp_path / "release.json").write_text('{"release_id": "abc", "trained_at": "2024-')
    with pytest.raises(ValueError, match=r"release.json is not a release this version can read.*retrain: true"):
        load_release(tmp_path)


def test_a_corrupt_training_checkpoint_is_refused_naming_it_and_left_as_it_is(tmp_path):
    checkpoint = tmp_path / CHECKPOINT_FILENAME
    checkpoint.write_bytes(b"not a checkpoint" * 64)
    data = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(batch_size=16, total_tokens=32, checkpoint_every=1, checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match=rf"{checkpoint} is not a readable safetensors file"):
        train_sae(data, SaeConfig(d_in=8, expansion_factor=2, k=2), config)
    assert checkpoint.read_bytes() == b"not a checkpoint" * 64


# --- NaN activations ------------------------------------------------------------------------------


def test_nan_activations_in_memory_are_refused_counting_the_rows():
    data = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    data[[3, 40], 1] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf in 2 of 64 rows"):
        train_sae(data, SaeConfig(d_in=8, expansion_factor=2, k=2), TrainConfig(batch_size=16, total_tokens=32))


def test_nan_activations_streamed_from_a_store_are_refused_naming_the_shard_and_layer(tmp_path):
    store = small_store(tmp_path / "store", nan=True)
    assert store.manifest["non_finite_values"] == 1  # counted at capture: the blocking check reads this
    rows = StoreRows(store, [1], torch.ones(6, dtype=torch.bool))
    shard = store.folder / store.manifest["shards"][1]
    with pytest.raises(ValueError, match=rf"layers \[1\] in {shard} contain NaN/inf"):
        train_sae(rows, SaeConfig(d_in=4, expansion_factor=2, k=2), TrainConfig(batch_size=2, total_tokens=4))


# --- EDGAR ----------------------------------------------------------------------------------------

URL = "https://data.sec.gov/submissions/CIK0000320193.json"


def test_edgar_403_fails_at_once_naming_the_url_and_not_the_user_agent():
    session = FakeSession(FakeResponse(403), FakeResponse(200, "{}"))
    with pytest.raises(EdgarRefused, match=rf"{URL} failed with HTTP 403 \(not retried\).*User-Agent") as refused:
        make_client(session, FakeTime()).get_json(URL)
    assert len(session.requests) == 1
    assert USER_AGENT not in str(refused.value) and USER_AGENT.split()[-1] not in str(refused.value)


def test_a_refused_request_fails_the_step_at_once_and_an_unreachable_edgar_is_retried():
    with pytest.raises(EdgarRefused):
        with assets.sources.retried_when_unreachable("EDGAR"):
            raise EdgarRefused("GET https://data.sec.gov/x failed with HTTP 404 (not retried)")
    with pytest.raises(RetryRequested):
        with assets.sources.retried_when_unreachable("EDGAR"):
            raise EdgarError("GET https://data.sec.gov/x failed after 6 attempts; last error: HTTP 500")


def test_a_malformed_user_agent_is_refused_without_being_repeated():
    with pytest.raises(ValueError, match="user_agent must look like") as refused:
        EdgarClient("Jane Roe jane.roe-at-example.com")
    assert "jane.roe" not in str(refused.value)


@pytest.mark.parametrize(("answer", "named"), [(FakeResponse(429), "HTTP 429"), (FakeResponse(500), "HTTP 500"),
                                               (requests.Timeout("read timed out"), "Timeout: read timed out")],
                         ids=["429", "500", "timeout"])
def test_edgar_429_500_and_timeouts_are_retried_then_fail_naming_the_url_and_the_last_error(answer, named):
    session, fake_time = FakeSession(answer), FakeTime()
    with pytest.raises(EdgarError, match=rf"{URL} failed after 3 attempts; last error: {named}"):
        make_client(session, fake_time, max_retries=2).get_json(URL)
    assert len(session.requests) == 3 and [s for s in fake_time.sleeps if s >= 1] == [1.0, 2.0]


def timed_out(*args, **kwargs):
    raise requests.Timeout("slow")


def test_an_edgar_timeout_in_a_refresh_keeps_the_stored_10k_texts(tmp_path, monkeypatch):
    monkeypatch.setattr(assets.sources, "LIVE_RETRIES", 0)  # the step fails now instead of retrying in a minute
    monkeypatch.setattr(requests.Session, "get", timed_out)
    stored = tmp_path / "artifacts" / "company_descriptions" / assets.sources.EDGAR_TEXTS
    stored.parent.mkdir(parents=True)
    fetched = pd.DataFrame({"cik": [320193], "ticker": ["AAPL"], "name": ["Apple"], "source": ["edgar:0000320193-23-1"],
                            "description": ["Apple designs smartphones."], "known_by": ["2023-11-03"]})
    texts_from_records(fetched, "earlier refresh").to_parquet(stored)
    before = stored.read_bytes()
    environment = {**resources_from_environment(), "io_manager": TableIOManager(root=str(tmp_path)),
                   "artifacts": ArtifactStorage(root=str(tmp_path)),
                   "edgar": EdgarResource(user_agent="PeerLens Test test@example.com", max_retries=0)}
    config = {"ops": {"company_descriptions": {"config": {"tickers": ["AAPL"], "refresh_from_edgar": ["AAPL"]}}}}
    result = materialize([company_descriptions], resources=environment, run_config=config, raise_on_error=False)
    assert not result.success
    error = str(result.failure_data_for_node("company_descriptions").error)
    assert f"EDGAR could not be reached: GET {URL}" in error and "Timeout: slow" in error
    assert stored.read_bytes() == before


# --- yfinance -------------------------------------------------------------------------------------


def yfinance_daily_prices(tmp_path, monkeypatch, frame: pd.DataFrame):
    import yfinance

    monkeypatch.setattr(assets.sources, "LIVE_RETRIES", 0)
    monkeypatch.setattr(yfinance, "download", lambda tickers, **options: frame)
    environment = {**resources_from_environment(), "io_manager": TableIOManager(root=str(tmp_path))}
    config = {"ops": {"daily_prices": {"config": {"source": "yfinance"}}}}
    return materialize([daily_prices], resources=environment, run_config=config, raise_on_error=False)


def test_a_partial_yfinance_download_is_counted_in_daily_prices_metadata(tmp_path, monkeypatch):
    result = yfinance_daily_prices(tmp_path, monkeypatch, yahoo_frame({"AAPL": AAPL, "MSFT": BRK_B}))
    metadata = metadata_of(result, "daily_prices")
    assert metadata["rule/tickers_without_data"] == metadata["rule/tickers_requested"] - 2
    assert metadata["rule/partial_rows_dropped"] == 1 and metadata["tickers"] == 2


def test_an_empty_yfinance_download_fails_the_step_as_unreachable(tmp_path, monkeypatch):
    result = yfinance_daily_prices(tmp_path, monkeypatch, pd.DataFrame())
    assert not result.success
    assert "yfinance returned no prices for any of" in str(result.failure_data_for_node("daily_prices").error)
