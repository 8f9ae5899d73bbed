"""company_features per day of texts: a day is encoded from its own store with the SAE release, its massive
tokens judged by the release's rule, and what a day holds does not depend on the days beside it."""

from __future__ import annotations

from dataclasses import replace

import dagster
import numpy as np
import pandas as pd
import pytest
import torch

from assets.activations import DayNotCaptured, day_folder
from assets.features import CompanyFeaturesConfig, company_features
from assets.partitions import TEXT_DATES
from peerlens.sources.texts import texts_from_records
from resources import ArtifactStorage
from sae_core.activation_store import FINGERPRINTS, ActivationStore, ActivationStoreWriter, document_fingerprint
from sae_core.features import encode_tokens
from sae_core.io import load_sae
from tests.assets.test_group_saes_config import run_group_saes

N_LAYERS, D_MODEL, TOKENS = 2, 8, 24
FIRST_DAY, FILING_DAY = "2017-01-02", "2018-03-01"


def history() -> pd.DataFrame:
    rows = [(f"CO{i}", f"company {i} sells things", FIRST_DAY) for i in range(10)]
    rows.append(("CO0", "company 0 files a new ten-k", FILING_DAY))
    frame = pd.DataFrame(rows, columns=["ticker", "description", "known_by"])
    return texts_from_records(frame.assign(cik=None, name=frame.ticker, source="test@" + frame.known_by), "test")


def capture_day(artifacts: ArtifactStorage, texts: pd.DataFrame, day: str, seed: int, sink: bool = False):
    """The day's store as llm_activations would leave it: random residuals, a 200x sink on the first token
    when `sink`."""
    day_texts = texts[texts.known_by == pd.Timestamp(day)]
    fingerprints = dict(zip(day_texts.text_id, day_texts.description.map(document_fingerprint)))
    writer = ActivationStoreWriter(day_folder(artifacts, day), N_LAYERS, D_MODEL, metadata={"model": "tiny", FINGERPRINTS: fingerprints})
    generator = torch.Generator().manual_seed(seed)
    for text_id in day_texts.text_id:
        activations = torch.randn(N_LAYERS, TOKENS, D_MODEL, generator=generator)
        if sink:
            activations[:, 0] *= 200
        writer.add(activations, [text_id] * TOKENS, torch.arange(TOKENS), torch.arange(TOKENS))
    return writer.close()


@pytest.fixture
def release(tmp_path):
    """A release trained on the first day's texts alone (the corpus before the filing)."""
    artifacts = ArtifactStorage(root=str(tmp_path / "home"))
    texts = history()
    corpus = capture_day(artifacts, texts, FIRST_DAY, seed=0)
    capture_day(artifacts, texts, FILING_DAY, seed=1, sink=True)
    trained, _ = run_group_saes(tmp_path, corpus, holdout_share=0.5)
    return trained, artifacts, texts


def encode(release, days: list[str]) -> dict:
    """company_features over `days` (one partition, or a range in one run): its outputs and checks by name."""
    trained, artifacts, texts = release
    with dagster.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(TEXT_DATES.name, [FIRST_DAY, FILING_DAY])
        keys = {"partition_key": days[0]} if len(days) == 1 else {"partition_key_range": dagster.PartitionKeyRange(days[0], days[-1])}
        context = dagster.build_asset_context(instance=instance, **keys)
        outputs = list(company_features(
            context=context, config=CompanyFeaturesConfig(layer=1), daily_texts=texts, group_saes=trained, artifacts=artifacts
        ))
    return {getattr(o, "output_name", None) or o.check_name: o for o in outputs}


def test_a_day_holds_its_texts_pooled_over_their_usable_tokens_whatever_days_run_beside_it(release):
    trained, artifacts, texts = release
    alone = encode(release, [FIRST_DAY])["company_features"].value
    together = encode(release, [FIRST_DAY, FILING_DAY])["company_features"].value
    pd.testing.assert_frame_equal(together[FIRST_DAY], alone)
    assert set(alone.text_id) == set(texts.text_id[texts.known_by == pd.Timestamp(FIRST_DAY)])

    # The mean over the text's tokens of its dense SAE codes, from the store directly.
    sae = load_sae(artifacts.resolve(trained.for_layer(1).path))
    text_id = alone.text_id.iloc[0]
    store = ActivationStore(day_folder(artifacts, FIRST_DAY))
    rows = torch.from_numpy((store.index.document == text_id).to_numpy())
    codes = encode_tokens(sae, store.layer(1)[rows])
    dense = torch.zeros(int(rows.sum()), sae.cfg.d_sae).scatter_(1, codes.top_indices, codes.top_acts).mean(dim=0)
    mine = alone[alone.text_id == text_id]
    np.testing.assert_allclose(mine.value, dense.numpy()[mine.latent], rtol=1e-5)
    assert (dense.numpy() > 0).sum() == len(mine)


def test_a_new_days_sink_is_judged_by_the_release_rule_and_left_out(release):
    outputs = encode(release, [FILING_DAY])
    metadata = outputs["company_features"].metadata
    # The filing is a day of its own; its first token sits 200x above the release corpus's medians.
    assert metadata["massive_tokens_excluded"].value == 1 and metadata["texts"].value == 1
    assert outputs["no_company_vector_is_dominated_by_one_token"].passed
    assert outputs["every_text_has_a_finite_feature_vector"].passed
    top = outputs["latent_top_tokens"].value
    assert (top.position != 0).all() and set(top.columns) >= {"latent", "rank", "activation", "document", "position", "token_id"}


def test_a_day_whose_store_holds_other_texts_is_named_not_encoded(release):
    trained, artifacts, texts = release
    edited = texts.assign(description=texts.description.where(texts.known_by != pd.Timestamp(FILING_DAY), "edited"))
    with pytest.raises(DayNotCaptured, match=f"{FILING_DAY} \\(holds other texts"):
        encode((trained, artifacts, edited), [FILING_DAY])


def test_a_release_without_a_massive_token_rule_is_refused_naming_the_retrain(release):
    trained, artifacts, texts = release
    with pytest.raises(ValueError, match="records no massive-token rule.*retrain: true"):
        encode((replace(trained, massive_rule=None), artifacts, texts), [FIRST_DAY])
