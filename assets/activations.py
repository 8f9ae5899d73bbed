"""LLM activations: the residual stream after every layer for every token of every description, and
the massive activations among them that everything downstream keeps out."""

import time

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    Config,
    MetadataValue,
    Output,
    asset,
    asset_check,
)
from pydantic import Field

from assets.metadata import figure_markdown, markdown_table, plt
from resources import ArtifactStorage, ComputeResource, LanguageModelResource
from sae_core.activation_store import (
    FINGERPRINTS,
    STORE_DTYPE,
    ActivationStore,
    ActivationStoreWriter,
    copy_documents,
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


@asset(group_name="activations", kinds={"pytorch", "safetensors"})
def llm_activations(
    context: AssetExecutionContext,
    company_descriptions: pd.DataFrame,
    language_model: LanguageModelResource,
    compute: ComputeResource,
    artifacts: ArtifactStorage,
) -> Output[dict]:
    """fp16 shards (n_layers, tokens, d_model) of the base model's residual stream, with a token index.

    One document per text of the history (its text_id), not per company: a company's every filing is
    captured, and the point-in-time steps downstream choose which one stands for it on a day. Texts
    the previous store already holds (same id, same content, same model and truncation) are copied
    from it, not captured again: a new filing costs one model pass over its own text.
    The value passed downstream is the store's manifest (folder, model, shapes); the tensors stay on disk.
    """
    started = time.perf_counter()
    text_ids = company_descriptions.text_id.tolist()
    fingerprints = dict(zip(text_ids, company_descriptions.description.map(document_fingerprint)))
    folder = artifacts.folder("llm_activations") / "store"
    previous = _reusable_store(folder, language_model)
    reused = documents_held(previous, fingerprints) if previous else set()
    new = [i for i, text_id in enumerate(text_ids) if text_id not in reused]

    model, device, token_ids = None, compute.torch_device(), []
    if new:
        model = language_model.load(device)
        context.log.info(f"loaded {language_model.name}: {model.n_layers} layers, width {model.d_model}, on {device}")
        token_ids = tokenize(
            model.tokenizer,
            [company_descriptions.description.iloc[i] for i in new],
            language_model.max_tokens,
            names=[text_ids[i] for i in new],
        )
    n_layers, d_model = (model.n_layers, model.d_model) if model else (previous.n_layers, previous.d_model)
    writer = ActivationStoreWriter(
        folder,
        n_layers,
        d_model,
        metadata={
            "model": language_model.name,
            "max_tokens": language_model.max_tokens,
            "text_ids": text_ids,
            FINGERPRINTS: fingerprints,
        },
    )
    capture_started = time.perf_counter()
    try:
        reused_tokens = copy_documents(previous, reused, writer) if reused else 0
        if new:
            for batch, captured in capture_documents(
                model, token_ids, batch_tokens=language_model.batch_tokens, device=device, log=context.log.info,
                dtype=STORE_DTYPE,
            ):
                documents = [text_ids[new[batch[i]]] for i in captured.document.tolist()]
                writer.add(captured.activations.cpu(), documents, captured.position.cpu(), captured.token_id.cpu())
        store = writer.close()
    except BaseException:
        writer.abort()
        raise
    capture_seconds = time.perf_counter() - capture_started
    manifest = {"folder": artifacts.relative(store.folder), **store.manifest}
    manifest.pop("text_ids")
    manifest.pop(FINGERPRINTS)
    captured_tokens = store.n_tokens - reused_tokens
    return Output(
        manifest,
        metadata={
            "model": language_model.name,
            "n_layers": store.n_layers,
            "d_model": store.d_model,
            "tokens": store.n_tokens,
            "texts": len(text_ids),
            "companies": int(company_descriptions.company_id.nunique()),
            "texts_captured": len(new),
            "texts_reused": len(reused),
            "tokens_through_the_model": captured_tokens,
            "truncated_descriptions": sum(len(ids) == language_model.max_tokens for ids in token_ids),
            "shards": len(store.manifest["shards"]),
            "capture_tokens_per_second": round(captured_tokens / capture_seconds, 1) if new else 0.0,
            "seconds_total": round(time.perf_counter() - started, 1),
            "device": device,
        },
    )


def _reusable_store(folder, language_model: LanguageModelResource) -> ActivationStore | None:
    """The store from the last run when it was captured with the same model and truncation, else None
    (also for a store this version cannot read: it is then captured anew, and replaced only on success)."""
    try:
        store = ActivationStore(folder)
    except (FileNotFoundError, KeyError, ValueError):
        return None
    same = store.manifest.get("model") == language_model.name and store.manifest.get("max_tokens") == language_model.max_tokens
    return store if same else None


@asset_check(asset=llm_activations, blocking=True, additional_ins={"company_descriptions": AssetIn("company_descriptions")})
def activations_are_finite_and_cover_every_company(
    llm_activations: dict, company_descriptions: pd.DataFrame, artifacts: ArtifactStorage
) -> AssetCheckResult:
    """No inf/NaN was stored (fp16 overflows above 65,504) and every text has at least one token."""
    store = ActivationStore(artifacts.resolve(llm_activations["folder"]))
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
    llm_activations: dict,
    language_model: LanguageModelResource,
    artifacts: ArtifactStorage,
):
    """The tokens whose residual norm exceeds `norm_multiple` × the layer's median at some layer
    (sae_core.massive_activations), and whether downstream assets exclude or keep them.

    Value: `MassiveTokens.to_dict()` (rule, treatment, per-layer median norms and counts, and the
    store rows of the massive tokens with their peak ratio and layer). Metadata names every company
    with a massive token, the token and its position.
    """
    store = ActivationStore(artifacts.resolve(llm_activations["folder"]))
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
        found.to_dict(),
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
