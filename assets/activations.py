"""LLM activations: the residual stream after every layer for every token of every text, captured per
day of texts (a partition each) and combined into one corpus, and the massive activations among them
that everything downstream keeps out."""

import time
from typing import NamedTuple

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    BackfillPolicy,
    Config,
    MetadataValue,
    Output,
    asset,
    asset_check,
)
from pydantic import Field

from assets.metadata import figure_markdown, markdown_table, plt
from assets.partitions import TEXT_DATES, partitions_value
from peerlens.sources.texts import text_days, texts_known_on
from resources import ArtifactStorage, ComputeResource, LanguageModelResource
from resources.compute import GPU_STEP
from sae_core.activation_store import (
    CAPTURE,
    FINGERPRINTS,
    STORE_DTYPE,
    ActivationStore,
    ActivationStoreWriter,
    StoreRef,
    capture_identity,
    document_fingerprint,
    documents_held,
)
from sae_core.capture import capture_documents, load_tokenizer, tokenize
from sae_core.massive_activations import (
    DEFAULT_NORM_MULTIPLE,
    MassiveTokens,
    find_massive_tokens,
    norm_ratios,
)
from sae_core.store_combine import combine_stores, copy_documents
from sae_core.store_selection import SELECTION, StoreSelection
from sae_core.windows import CaptureCost


class LlmActivationsConfig(Config):
    keep_layers: list[int] = Field(
        default_factory=list,
        description="Store only these layers' activations (e.g. the layers a release encodes with); empty: every "
        "layer. Layer distances, SAE training and features then refuse a layer not kept.",
    )
    token_share: float = Field(
        default=1.0,
        description="Store a hashed Bernoulli sample of this share of the tokens (a training reservoir that combines "
        "across days; sae_core.store_selection); 1: every token. Company features need every token.",
    )
    sample_seed: int = Field(default=0, description="Seed of the token sample.")

    def selection(self) -> StoreSelection:
        return StoreSelection(tuple(self.keep_layers) or None, self.token_share, self.sample_seed)


@asset(
    group_name="activations",
    kinds={"pytorch", "safetensors"},
    partitions_def=TEXT_DATES,
    # Every missing day in one run loads the model once.
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=[AssetCheckSpec("captured_activations_are_finite", asset="llm_activations", blocking=True)],
    **GPU_STEP,
)
def llm_activations(
    context: AssetExecutionContext,
    config: LlmActivationsConfig,
    daily_texts: pd.DataFrame,
    language_model: LanguageModelResource,
    compute: ComputeResource,
    artifacts: ArtifactStorage,
):
    """One partition per text date D: fp16 shards (n_layers, tokens, d_model) of the base model's residual
    stream for the texts that became known on D, with a token index, under artifacts/llm_activations/D/.

    One document per text (its text_id), not per company. A new filing is a new partition: capturing it
    runs the model over its text and nothing else. A text is read whole, in overlapping windows when it is
    longer than one (`LanguageModelResource.window`, `stride`; `sae_core.capture.document_windows`), each token
    stored once at its position in the text. Texts the partition's previous store already holds (same id,
    content, model and window settings) are copied from it, not captured again. The value of each
    partition is a `StoreRef` (folder, model, shapes); the tensors stay on disk. The config can keep fewer
    layers or a sample of the tokens (`LlmActivationsConfig`); the metadata says what a stored token costs.
    """
    started = time.perf_counter()
    capture = _PartitionCapture(context, language_model, compute, config.selection())
    captured = {
        key: capture(texts_known_on(daily_texts, key), day_folder(artifacts, key), artifacts)
        for key in context.partition_keys
    }
    parts = {key: day.store for key, day in captured.items()}
    totals = pd.DataFrame([day.counts for day in captured.values()]).sum()
    seconds = capture.capture_seconds
    yield Output(
        partitions_value(parts),
        metadata={
            "model": language_model.name,
            "capture": MetadataValue.json(capture.windows.settings()),
            "partitions": len(parts),
            **{name: int(value) for name, value in totals.items()},
            "capture_tokens_per_second": round(float(totals["tokens_through_the_model"]) / seconds, 1) if seconds else 0.0,
            "bytes_per_token": MetadataValue.json(next(iter(captured.values())).bytes_per_token),
            "kept": MetadataValue.json(capture.keep.to_manifest()),
            "seconds_total": round(time.perf_counter() - started, 1),
            "device": capture.device,
        },
    )
    # fp16 overflows above 65,504: a day with inf or NaN stored must not reach the corpus.
    non_finite = {key: day.counts["non_finite_values"] for key, day in captured.items() if day.counts["non_finite_values"]}
    yield AssetCheckResult(
        check_name="captured_activations_are_finite",
        passed=not non_finite,
        metadata={"days_with_non_finite_values": MetadataValue.json(non_finite), "days": len(parts)},
    )


class _CapturedDay(NamedTuple):
    store: StoreRef
    """The partition's value."""
    counts: dict
    """texts, texts_captured, texts_reused, tokens, tokens_through_the_model, windows, texts_read_in_windows,
    texts_cut_at_max_document_tokens, non_finite_values."""
    bytes_per_token: dict
    """What a stored token costs (`ActivationStore.bytes_per_token`): activations, norms, total."""


class _PartitionCapture:
    """Captures one partition's texts into its store; loads the model on the first text that needs it."""

    def __init__(self, context, language_model: LanguageModelResource, compute: ComputeResource,
                 keep: StoreSelection = StoreSelection()):
        self.context, self.language_model, self.device = context, language_model, compute.torch_device()
        self.keep = keep
        self.windows = language_model.capture_windows()  # a bad window, stride or cap fails before any work
        self.model, self.capture_seconds = None, 0.0

    def __call__(self, texts: pd.DataFrame, folder, artifacts: ArtifactStorage) -> _CapturedDay:
        text_ids = texts.text_id.tolist()
        metadata = {
            "model": self.language_model.name, CAPTURE: self.windows.settings(), FINGERPRINTS: _fingerprints(texts),
            **({} if self.keep.keeps_everything else {SELECTION: self.keep.to_manifest()}),
        }
        previous = _reusable_store(folder, metadata)
        reused = documents_held(previous, metadata[FINGERPRINTS]) if previous else set()
        if previous and reused == set(text_ids) and set(previous.index.document.unique()) == reused:
            return _captured_day(previous, artifacts, texts=len(text_ids), captured=0, reused=len(reused))
        new = [i for i, text_id in enumerate(text_ids) if text_id not in reused]
        token_ids = self._tokenize([texts.description.iloc[i] for i in new], [text_ids[i] for i in new])
        n_layers, d_model = (self.model.n_layers, self.model.d_model) if self.model else (previous.n_layers, previous.d_model)
        writer = ActivationStoreWriter(folder, n_layers, d_model, metadata=metadata, keep=self.keep)
        started = time.perf_counter()
        try:
            if reused:
                copy_documents(previous, reused, writer)
            for batch, captured in capture_documents(
                self.model, token_ids, batch_tokens=self.language_model.batch_tokens, device=self.device,
                log=self.context.log.info, dtype=STORE_DTYPE, windows=self.windows,
            ) if new else ():
                documents = [text_ids[new[batch[i]]] for i in captured.document.tolist()]
                writer.add(captured.activations.cpu(), documents, captured.position.cpu(), captured.token_id.cpu())
            store = writer.close()
        except BaseException:
            writer.abort()
            raise
        self.capture_seconds += time.perf_counter() - started
        return _captured_day(
            store, artifacts, texts=len(text_ids), captured=len(new), reused=len(reused),
            cost=self.windows.cost([len(ids) for ids in token_ids]),
        )

    def _tokenize(self, descriptions: list[str], names: list[str]) -> list[list[int]]:
        """Whole texts (the windows apply the cap), tokenized by the model loaded on the first call."""
        if not descriptions:
            return []
        self._load_model()
        return tokenize(self.model.tokenizer, descriptions, None, names=names)

    def _load_model(self) -> None:
        if self.model is None:
            self.model = self.language_model.load(self.device)
            self.context.log.info(
                f"loaded {self.language_model.name}: {self.model.n_layers} layers, width {self.model.d_model}, on {self.device}"
            )


def _captured_day(store: ActivationStore, artifacts: ArtifactStorage, texts: int, captured: int, reused: int,
                  cost: CaptureCost = CaptureCost(0, 0, 0, 0, 0, 0)) -> _CapturedDay:
    """A captured day: what refers to its store, and what running the model over its new texts cost."""
    counts = {
        "texts": texts, "texts_captured": captured, "texts_reused": reused, "tokens": store.n_tokens,
        "tokens_through_the_model": cost.tokens_run, "windows": cost.windows,
        "texts_read_in_windows": cost.documents_windowed, "texts_cut_at_max_document_tokens": cost.documents_cut,
        "non_finite_values": int(store.manifest["non_finite_values"]),
    }
    return _CapturedDay(artifacts.store_ref(store), counts, store.bytes_per_token)


def _fingerprints(texts: pd.DataFrame) -> dict[str, str]:
    """text_id → `document_fingerprint` of its description: what a day's store records it was captured from."""
    return dict(zip(texts.text_id, texts.description.map(document_fingerprint)))


def day_folder(artifacts: ArtifactStorage, day: str):
    """Where the llm_activations partition of text date `day` keeps its store."""
    return artifacts.folder("llm_activations") / day


class DayNotCaptured(ValueError):
    """An llm_activations partition that is missing, or holds other texts than its day has now."""


def open_day_store(artifacts: ArtifactStorage, day: str, texts: pd.DataFrame) -> ActivationStore:
    """The llm_activations store of `day`, which must hold exactly `texts` (that day's texts as they are now).

    Raises:
        DayNotCaptured: naming the day and what is wrong with its store.
    """
    try:
        store = ActivationStore(day_folder(artifacts, day))
    except FileNotFoundError:
        raise DayNotCaptured(f"{day} (not materialized)") from None
    if store.manifest.get(FINGERPRINTS, {}) != _fingerprints(texts):
        raise DayNotCaptured(f"{day} (holds other texts than company_descriptions has for that day)")
    return store


def _reusable_store(folder, metadata: dict) -> ActivationStore | None:
    """The partition's store from the last run when it was captured as `metadata` (its model, window, stride and
    cap) would capture it now (`capture_identity`), else None (also for a store this version cannot read: it is
    then captured anew, and replaced only on success)."""
    try:
        store = ActivationStore(folder)
    except (FileNotFoundError, KeyError, ValueError):
        return None
    return store if capture_identity(store.manifest) == capture_identity(metadata) else None


@asset(group_name="activations", kinds={"pytorch", "safetensors"}, deps=[llm_activations])
def activation_corpus(company_descriptions: pd.DataFrame, artifacts: ArtifactStorage) -> Output[StoreRef]:
    """Every text of the history in one activation store: the llm_activations partitions of its text dates,
    combined (`sae_core.store_combine.combine_stores`: one index and one norms file; no shard is copied).

    What everything downstream reads: layer distances, SAE training and evaluation, company features.
    The value is a `StoreRef` to the combined store (folder relative to the storage root, model, shapes).
    Each partition must hold exactly its day's texts as they are now; one that does not is named.
    """
    stores, stale = [], []
    for key in text_days(company_descriptions):
        try:
            stores.append(open_day_store(artifacts, key, texts_known_on(company_descriptions, key)))
        except DayNotCaptured as error:
            stale.append(str(error))
    if stale:
        raise ValueError(f"activation_corpus: materialize llm_activations partitions {', '.join(stale)} first")
    store = combine_stores(stores, artifacts.folder("activation_corpus") / "store")
    corpus = artifacts.store_ref(store)
    return Output(
        corpus,
        metadata={
            "model": corpus.model,
            "text_dates": len(stores),
            "texts": int(store.manifest["n_documents"]),
            "companies": int(company_descriptions.company_id.nunique()),
            "tokens": store.n_tokens,
            "shards": len(store.manifest["shards"]),
        },
    )


@asset_check(asset=activation_corpus, blocking=True, additional_ins={"company_descriptions": AssetIn("company_descriptions")})
def activations_are_finite_and_cover_every_company(
    activation_corpus: StoreRef, company_descriptions: pd.DataFrame, artifacts: ArtifactStorage
) -> AssetCheckResult:
    """No inf/NaN was stored (fp16 overflows above 65,504) and every text has at least one token."""
    store = artifacts.store(activation_corpus)
    covered = set(store.index.document)
    missing = sorted(set(company_descriptions.text_id) - covered)
    non_finite = int(store.manifest["non_finite_values"])
    return AssetCheckResult(
        passed=non_finite == 0 and not missing,
        metadata={"non_finite_values": non_finite, "texts_without_tokens": ", ".join(missing) or "none"},
    )


class MassiveActivationsConfig(Config):
    norm_multiple: float = Field(
        default=DEFAULT_NORM_MULTIPLE,
        description="A token is massive when its residual norm exceeds this multiple of the layer's median norm at "
        "some layer (the sample's sinks peak at 27-151, every other token at <= 12.1).",
    )
    treatment: str = Field(
        default="exclude",
        description="exclude: massive tokens are kept out of layer distances, SAE training and evaluation, spliced "
        "evaluation and company pooling; keep: found and reported only (the behaviour before, for comparison).",
    )
    max_affected_share: float = Field(
        default=0.2, description="Warn when more than this share of companies has a massive token."
    )


@asset(
    group_name="activations",
    kinds={"pytorch"},
    check_specs=[AssetCheckSpec("few_companies_have_massive_tokens", asset="massive_activations")],
)
def massive_activations(
    config: MassiveActivationsConfig,
    activation_corpus: StoreRef,
    language_model: LanguageModelResource,
    artifacts: ArtifactStorage,
):
    """The tokens whose residual norm exceeds `norm_multiple` × the layer's median at some layer
    (sae_core.massive_activations), and whether downstream assets exclude or keep them.

    Value: `MassiveTokens` (rule, treatment, per-layer median norms and counts, and the
    store rows of the massive tokens with their peak ratio and layer). Metadata names every company
    with a massive token, the token and its position.
    """
    store = artifacts.store(activation_corpus)
    norms = store.token_norms()
    found = find_massive_tokens(norms, config.norm_multiple, config.treatment)
    index = store.index
    decode = load_tokenizer(language_model.name).decode
    tokens = index.iloc[list(found.rows)].assign(
        token=lambda frame: [decode([int(token_id)]) for token_id in frame.token_id],
        peak_ratio=found.peak_ratios,
        peak_layer=found.peak_layers,
    )
    by_company = tokens.groupby("document").agg(
        massive_tokens=("position", "size"),
        positions=("position", lambda p: ", ".join(map(str, p))),
        tokens=("token", lambda t: " | ".join(t)),
        peak_ratio=("peak_ratio", "max"),
    ).reset_index().rename(columns={"document": "text"})
    n_companies = int(index.document.nunique())
    affected_share = len(by_company) / n_companies
    by_layer = pd.DataFrame(
        {"layer": range(found.n_layers), "median_norm": found.median_norms, "tokens_over_bound": found.tokens_over_bound}
    )
    yield Output(
        found,
        metadata={
            "treatment": found.treatment,
            "norm_multiple": found.norm_multiple,
            "massive_tokens": len(found.rows),
            "companies_with_massive_tokens": len(by_company),
            "affected_share": round(affected_share, 4),
            "tokens": store.n_tokens,
            "by_company": markdown_table(by_company, floatfmt=".1f"),
            "by_layer": markdown_table(by_layer, floatfmt=".1f"),
            "peak_ratio_plot": _peak_ratio_plot(norms, found),
        },
    )
    yield AssetCheckResult(
        check_name="few_companies_have_massive_tokens",
        passed=bool(affected_share <= config.max_affected_share),
        severity=AssetCheckSeverity.WARN,
        metadata={
            "affected_share": round(affected_share, 4),
            "companies_with_massive_tokens": len(by_company),
            "companies": n_companies,
            "max_affected_share": config.max_affected_share,
            "treatment": found.treatment,
        },
    )


def _peak_ratio_plot(norms, found: MassiveTokens) -> MetadataValue:
    """Histogram of every token's peak norm ratio max_l ‖x_{t,l}‖ / median_l, log scale, with the bound."""
    peak = norm_ratios(norms)[1].max(dim=1).values.numpy()
    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    axis.hist(peak, bins=np.logspace(np.log10(max(peak.min(), 1e-2)), np.log10(peak.max() * 1.1), 60))
    axis.axvline(found.norm_multiple, color="red", linestyle="--", label=f"bound {found.norm_multiple:g}× median")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("peak over layers of ‖x‖ / layer median")
    axis.set_ylabel("tokens")
    axis.legend()
    return figure_markdown(figure)
