"""The representation study: which representation of a company's text finds co-moving peers, point in time."""

import pandas as pd
import torch
from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    Config,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from assets.clusters import EMBEDDING_COLUMNS
from assets.features import feature_layer
from assets.metadata import figure_markdown, markdown_table, plt
from assets.partitions import YEARS
from assets.sae_regimes import train_layer_sae
from peerlens.similarity.layer_representations import (
    TextTokens,
    residual_representations,
    sae_representations,
    selected_layer,
    text_tokens,
)
from peerlens.similarity.representation_study import (
    Representation,
    RepresentationStudy,
    TABLE_COLUMNS,
    RepresentationStudyConfig,
    score_representations,
    winner_margin,
)
from peerlens.sources.sample_2017 import members_on
from resources import ArtifactStorage, ComputeResource, SaeTrainer
from resources.compute import GPU_STEP
from sae_core.activation_store import ActivationStore, StoreRef
from sae_core.config import SaeConfig, TrainConfig
from sae_core.io import load_sae
from sae_core.massive_activations import MassiveTokens
from sae_core.release import load_release
from sae_core.sae_set import SaeSet
from sae_core.token_split import TokenSplit, token_split

_DEFAULTS = RepresentationStudyConfig()


class RepresentationStudyAssetConfig(Config):
    layers: list[int] = Field(default=[5, 12, 19, 26], description="Layers whose SAE latents and raw residual are compared.")
    poolings: list[str] = Field(
        default=["mean", "max", "sum", "specificity"],
        description="Token poolings: mean, max, sum, and specificity (mean latents weighted by ln(n/df), unit profiles).",
    )
    expansion_factors: list[int] = Field(
        default=[2, 4, 8], description="Widths (× d_model) of single-layer SAEs trained at the feature layer, seed 0."
    )
    seeds: list[int] = Field(
        default=[0, 1, 2], description="Seeds of single-layer SAEs at the release's width: the seed-to-seed spread."
    )
    feature_layer: int = Field(default=-1, description="Layer of the width and seed SAEs; -1: company_features' default.")
    anchor: str = Field(default=_DEFAULTS.anchor, description="The representation every other is compared with.")
    neighbours: int = Field(default=_DEFAULTS.neighbours, description="k of the k-nearest-neighbour label agreement.")
    pca_components: int = Field(default=_DEFAULTS.pca_components, description="Components kept before cosine distances.")
    matched_draws: int = Field(default=_DEFAULTS.matched_draws, description="Size-matched draws averaged in mc_matched.")
    n_boot: int = Field(default=_DEFAULTS.n_boot, description="Bootstrap replicates per interval.")


@asset(
    group_name="evaluation",
    kinds={"pandas", "parquet", "pytorch"},
    ins={name: AssetIn(partition_mapping=AllPartitionMapping()) for name in ("text_embeddings", "monthly_returns")},
    check_specs=[AssetCheckSpec("representations_use_only_what_was_known_before_each_date", asset="representation_study",
                                blocking=True)],
    **GPU_STEP,
)
def representation_study(
    context: AssetExecutionContext,
    config: RepresentationStudyAssetConfig,
    activation_corpus: StoreRef,
    massive_activations: MassiveTokens,
    group_saes: SaeSet,
    text_embeddings: pd.DataFrame,
    company_descriptions: pd.DataFrame,
    industry_codes: pd.DataFrame,
    index_membership: pd.DataFrame,
    daily_prices: pd.DataFrame,
    monthly_returns: pd.DataFrame,
    compute: ComputeResource,
    artifacts: ArtifactStorage,
    sae_trainer: SaeTrainer,
):
    """Which representation finds peers whose returns move together: SAE latents (the release's, at several
    layers and poolings; single-layer SAEs of several widths and seeds), the raw residual at the same layers,
    MiniLM and TF-IDF, each clustered on every 1 January from the texts known before it and scored on that
    year's returns (`peerlens.similarity.representation_study`): MC at the reference's cluster sizes and per
    pair, with cluster-bootstrap intervals against the anchor, and k-NN agreement with the industry labels.

    Point in time: a year is scored only when every text any of the SAEs was trained on (the release's corpus,
    which the study's own SAEs train on too) was known before its 1 January (the others are named); each
    universe holds only texts known before its date. Research, like the regime study: a filing does not rerun it.
    """
    store = artifacts.store(activation_corpus)
    texts = company_descriptions[company_descriptions.text_id.isin(set(store.index.document))]
    training_texts = _release_corpus(group_saes, artifacts, texts)
    sae_texts_known_by = pd.Timestamp(training_texts.known_by.max())
    dates = [pd.Timestamp(key) for key in YEARS.get_partition_keys() if pd.Timestamp(key) > sae_texts_known_by]
    skipped = [key for key in YEARS.get_partition_keys() if pd.Timestamp(key) <= sae_texts_known_by]
    if not dates:
        # The 2024 vintage: every text is newer than every year of returns, so nothing can be scored honestly.
        context.log.warning(f"no year of returns starts after {sae_texts_known_by.date()}, the newest SAE training text")
        yield Output(pd.DataFrame(columns=TABLE_COLUMNS), metadata={"scored_years": "[]", "reason": "every text is newer "
                     f"than every year of returns (newest SAE training text {sae_texts_known_by.date()})"})
        yield AssetCheckResult(check_name="representations_use_only_what_was_known_before_each_date", passed=True,
                               metadata={"scoring_dates": 0})
        return
    tokens = text_tokens(store.index, group_saes.massive_rule.usable_mask(store.token_norms()), texts.text_id.tolist())
    split = _training_split(store, group_saes, massive_activations, set(training_texts.text_id))
    representations, study_saes = _store_representations(context, config, store, tokens, split, group_saes, compute,
                                                         artifacts, sae_trainer)
    embeddings = text_embeddings.set_index("text_id").loc[tokens.text_ids, EMBEDDING_COLUMNS].to_numpy()
    representations += [
        Representation("minilm", "minilm", width=len(EMBEDDING_COLUMNS), features=(tokens.text_ids, embeddings)),
        # company_clusters' MiniLM: the plain cosine of the unit embeddings, as the paper's baseline.
        Representation("minilm cosine", "minilm", width=len(EMBEDDING_COLUMNS), features=(tokens.text_ids, embeddings),
                       reduced=False),
        Representation("tfidf", "tfidf"),
    ]
    listed = daily_prices.groupby("ticker").date.min()
    study = score_representations(
        representations, texts, dates, industry_codes, monthly_returns,
        RepresentationStudyConfig(anchor=config.anchor, neighbours=config.neighbours, pca_components=config.pca_components,
                                  matched_draws=config.matched_draws, n_boot=config.n_boot),
        members_on=(lambda day: members_on(index_membership, day)) if len(index_membership) else None,
        tradable_on=lambda day: set(listed.index[listed <= day]),
    )
    yield Output(study.table, metadata=_metadata(study, study_saes, skipped, sae_texts_known_by))
    late = study.universes[study.universes.newest_text_known_by >= study.universes.as_of]
    yield AssetCheckResult(
        check_name="representations_use_only_what_was_known_before_each_date",
        passed=bool(late.empty and (study.universes.as_of > sae_texts_known_by).all()),
        metadata={"scoring_dates": len(study.universes), "dates_with_a_later_text": len(late),
                  "sae_training_texts_known_by": str(sae_texts_known_by.date())},
    )


def _release_corpus(group_saes: SaeSet, artifacts: ArtifactStorage, store_texts: pd.DataFrame) -> pd.DataFrame:
    """The texts the SAE release was trained on (all of the store's when its record is not found): the study's
    own SAEs train on them too, so the newest of them bounds what any SAE of the study has read."""
    release = load_release(artifacts.folder("group_saes") / "releases" / group_saes.notes.get("release", ""))
    return store_texts[store_texts.text_id.isin(set(release.corpus))] if release else store_texts


def _training_split(store: ActivationStore, group_saes: SaeSet, massive: MassiveTokens, corpus: set[str]) -> TokenSplit:
    """The release's token split (same held-out companies, massive tokens out), kept to the release's texts."""
    split = token_split(store.index.document, group_saes.holdout_share, massive)
    in_corpus = torch.from_numpy(store.index.document.isin(corpus).to_numpy(copy=True))
    return TokenSplit(*(mask & in_corpus for mask in split))


def _store_representations(context, config, store: ActivationStore, tokens: TextTokens, split: TokenSplit,
                           group_saes: SaeSet, compute, artifacts, trainer) -> tuple[list[Representation], pd.DataFrame]:
    """The raw residual and the release's SAE latents at each configured layer, then the width and seed SAEs
    trained at the feature layer; returns them with the trained SAEs' held-out metrics."""
    representations = []
    for layer in config.layers:
        if not 0 <= layer < store.n_layers:
            raise ValueError(f"representation_study layer {layer} is out of range for a model with {store.n_layers} layers")
        x = selected_layer(store, layer, tokens)
        sae = load_sae(artifacts.resolve(group_saes.for_layer(layer).path_for(layer)))
        representations += residual_representations(x, tokens, layer, config.poolings)
        representations += sae_representations(sae, x, tokens, layer, config.poolings)
    layer = feature_layer(config.feature_layer, store.n_layers)
    x = selected_layer(store, layer, tokens)
    release_width = group_saes.sae_config.expansion_factor
    variants = sorted({(factor, 0) for factor in config.expansion_factors} | {(release_width, s) for s in config.seeds})
    rows = []
    for factor, seed in variants:
        sae_cfg = SaeConfig(**{**group_saes.sae_config.to_dict(), "expansion_factor": factor})
        train_cfg = TrainConfig(
            **{**group_saes.train_config.to_dict(), "seed": seed, "device": compute.torch_device()}
        )
        folder = artifacts.folder("representation_study") / f"layer_{layer:02d}_x{factor}_seed{seed}"
        trained = train_layer_sae(context, trainer, store, layer, split, sae_cfg, train_cfg, folder, artifacts)
        sae = load_sae(artifacts.resolve(trained.path))
        label = f"single x{factor} seed {seed}"
        kept = config.poolings if (factor, seed) == (release_width, 0) else ["mean"]
        representations += sae_representations(sae, x, tokens, layer, kept, label=label, seed=seed)
        rows.append({"sae": f"sae@{layer} {label}", "d_sae": sae_cfg.d_sae, "seed": seed,
                     **{k: getattr(trained.metrics[layer], k) for k in ("fvu", "l0", "dead_fraction")}})
        context.log.info(f"study SAE {label} at layer {layer}: fvu {rows[-1]['fvu']:.4f}")
    return representations, pd.DataFrame(rows)


def _metadata(study: RepresentationStudy, study_saes: pd.DataFrame, skipped: list[str], known_by) -> dict:
    return {
        "winner": MetadataValue.json(winner_margin(study)),
        "scored_years": str(sorted(study.yearly.year.unique().tolist())),
        "years_not_scored_sae_texts_not_yet_known": ", ".join(skipped) or "none",
        "sae_training_texts_known_by": str(pd.Timestamp(known_by).date()),
        "companies_per_date": markdown_table(study.universes.astype(str)),
        "study": markdown_table(study.table.drop(columns=["mc_cluster", "n_years"]).round(3)),
        "plot": _plot(study.table),
        "study_saes": markdown_table(study_saes, floatfmt=".4f"),
        "seed_spread": MetadataValue.json(_seed_spread(study.table, study_saes)),
    }


def _seed_spread(table: pd.DataFrame, study_saes: pd.DataFrame) -> dict:
    """Standard deviation over the seeds of the single-layer SAEs at the width most seeds were trained at: of
    their held-out FVU, and of the MC of their mean-pooled latents (what a difference must exceed to count)."""
    width = study_saes.d_sae.mode().iloc[0]
    seeds = study_saes[study_saes.d_sae == width]
    scores = table.set_index("representation").loc[seeds.sae + " mean"]
    return {"d_sae": int(width), "seeds": len(seeds), "fvu_std": float(seeds.fvu.std()),
            "mc_matched_std": float(scores.mc_matched.std()), "mc_pair_std": float(scores.mc_pair.std())}


def _plot(table: pd.DataFrame) -> MetadataValue:
    """MC at matched sizes by layer per family and pooling, yardsticks as lines; and matched MC against
    nearest-neighbour sector agreement for every representation."""
    figure, (by_layer, scatter) = plt.subplots(1, 2, figsize=(13, 4.5))
    layered = table[table.layer.notna() & ~table.representation.str.contains("single")]
    for (family, pooling), rows in layered.groupby(["family", "pooling"]):
        rows = rows.sort_values("layer")
        by_layer.plot(rows.layer, rows.mc_matched, "-" if family == "sae" else "--", marker="o", markersize=3,
                      label=f"{family} {pooling}")
    for _, row in table[table.layer.isna()].iterrows():
        by_layer.axhline(row.mc_matched, linestyle=":", linewidth=1, color="grey")
        by_layer.annotate(row.representation, (layered.layer.min(), row.mc_matched), fontsize=7, va="bottom")
    by_layer.set_xlabel("layer")
    by_layer.set_ylabel("MC at matched sizes")
    by_layer.legend(fontsize=6)
    agreement = [c for c in table.columns if c.startswith("agreement_")][:1]
    if agreement:
        for family, rows in table.groupby("family"):
            scatter.scatter(rows[agreement[0]], rows.mc_matched, s=14, label=family)
        scatter.set_xlabel(f"share of nearest neighbours of the same {agreement[0].removeprefix('agreement_')}")
        scatter.set_ylabel("MC at matched sizes")
        scatter.legend(fontsize=7)
    return figure_markdown(figure)
