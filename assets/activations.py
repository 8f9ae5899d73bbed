"""LLM activations: the residual stream after every layer for every token of every description."""

import shutil
import time

import pandas as pd
from dagster import AssetIn, AssetCheckResult, AssetExecutionContext, Output, asset, asset_check

from resources import ArtifactStorage, ComputeResource, LanguageModelResource
from sae_core.activation_store import STORE_DTYPE, ActivationStore, ActivationStoreWriter
from sae_core.capture import capture_documents, tokenize


@asset(group_name="activations", kinds={"pytorch", "safetensors"})
def llm_activations(
    context: AssetExecutionContext,
    company_descriptions: pd.DataFrame,
    language_model: LanguageModelResource,
    compute: ComputeResource,
    artifacts: ArtifactStorage,
) -> Output[dict]:
    """fp16 shards (n_layers, tokens, d_model) of the base model's residual stream, with a token index.

    The value passed downstream is the store's manifest (folder, model, shapes); the tensors stay on disk.
    """
    device = compute.torch_device()
    started = time.perf_counter()
    model = language_model.load(device)
    context.log.info(f"loaded {language_model.name}: {model.n_layers} layers, width {model.d_model}, on {device}")
    tickers = company_descriptions.ticker.tolist()
    token_ids = tokenize(model.tokenizer, company_descriptions.description.tolist(), language_model.max_tokens)
    truncated = sum(len(ids) == language_model.max_tokens for ids in token_ids)

    folder = artifacts.folder("llm_activations") / "store"
    writer = ActivationStoreWriter(
        folder,
        model.n_layers,
        model.d_model,
        metadata={"model": language_model.name, "max_tokens": language_model.max_tokens, "tickers": tickers},
    )
    capture_started = time.perf_counter()
    try:
        for batch, captured in capture_documents(
            model, token_ids, batch_tokens=language_model.batch_tokens, device=device, log=context.log.info,
            dtype=STORE_DTYPE,
        ):
            documents = [tickers[batch[i]] for i in captured.document.tolist()]
            writer.add(captured.activations.cpu(), documents, captured.position.cpu(), captured.token_id.cpu())
        store = writer.close()
    except BaseException:
        shutil.rmtree(writer.folder.with_name(writer.folder.name + ".tmp"), ignore_errors=True)
        raise
    capture_seconds = time.perf_counter() - capture_started
    manifest = {"folder": str(store.folder), **store.manifest}
    manifest.pop("tickers")
    return Output(
        manifest,
        metadata={
            "model": language_model.name,
            "n_layers": store.n_layers,
            "d_model": store.d_model,
            "tokens": store.n_tokens,
            "companies": len(tickers),
            "truncated_descriptions": truncated,
            "shards": len(store.manifest["shards"]),
            "capture_tokens_per_second": round(store.n_tokens / capture_seconds, 1),
            "seconds_total": round(time.perf_counter() - started, 1),
            "device": device,
        },
    )


@asset_check(asset=llm_activations, blocking=True, additional_ins={"company_descriptions": AssetIn("company_descriptions")})
def activations_are_finite_and_cover_every_company(
    llm_activations: dict, company_descriptions: pd.DataFrame
) -> AssetCheckResult:
    """No inf/NaN was stored (fp16 overflows above 65,504) and every company has at least one token."""
    store = ActivationStore(llm_activations["folder"])
    covered = set(store.index.document)
    missing = sorted(set(company_descriptions.ticker) - covered)
    non_finite = int(store.manifest["non_finite_values"])
    return AssetCheckResult(
        passed=non_finite == 0 and not missing,
        metadata={"non_finite_values": non_finite, "companies_without_tokens": ", ".join(missing) or "none"},
    )
