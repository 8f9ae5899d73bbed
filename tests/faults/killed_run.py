"""Runs that are killed: one step of the graph, run in a child process that stops itself at a chosen point so
that the test can SIGKILL it there, and the same steps as the tests run them in their own process (the run
before the fault, and the run again after it).

`kill_at(fault, root)` runs the step of `fault` (a key of KILL_POINTS) on the storage root `root` in a child
process whose function at the kill point is patched to write a marker file and wait, waits for the marker and
sends SIGKILL. The children are forks of one forkserver that imported this module once (as
tests/assets/test_gpu_pool.py's steps are): a fresh interpreter per kill would import dagster, torch and
transformers each time. Everything is tiny (a 3-layer Llama of width 32, SAEs of 16 latents), on the CPU.
"""

import functools
import io
import itertools
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
import torch
from dagster import AssetSpec, Config, DagsterInstance, asset, build_asset_context, materialize
from transformers import LlamaForCausalLM

from assets.activations import llm_activations
from assets.features import company_features
from assets.partitions import TEXT_DATES
from assets.saes import GroupSaesConfig, group_saes
from peerlens.layout import storage_root, table_path, write_json_atomically, write_parquet_atomically
from peerlens.sources.texts import texts_from_records
from resources import ArtifactStorage, ComputeResource, LanguageModelResource, SaeTrainer, TableIOManager
from sae_core.activation_store import ActivationStore
from sae_core.capture import LoadedModel, wrap_model
from sae_core.groups import LayerGrouping
from sae_core.massive_activations import find_massive_tokens
from sae_core.sae_set import SaeSet
from tests.sae_core.test_capture import word_tokenizer
from tests.tiny_models import tiny_llama_config

DAY = "2017-01-02"
"""The one day of texts (a text_dates partition) every step here runs on."""


# --- activation capture: llm_activations ---------------------------------------------------------


def texts(*rows: tuple[str, str]) -> pd.DataFrame:
    """(ticker, description) rows as a text history whose texts are all known on DAY."""
    frame = pd.DataFrame(rows, columns=["ticker", "description"]).assign(known_by=DAY)
    return texts_from_records(frame.assign(cik=None, name=frame.ticker, source="test@" + DAY), "test")


BEFORE = texts(("BANK", "the bank sells loans"), ("CARS", "the car sells cars"))
"""The day's texts as first captured: 8 tokens."""
AFTER = texts(("BANK", "the bank sells loans loans the bank"), ("CARS", "the car sells cars cars the car"))
"""The same day after both texts were edited: 14 tokens, none of which the first store holds."""


class TinyLanguageModel(LanguageModelResource):
    """The tiny Llama, the same weights on every load (seed 0)."""

    def load(self, device: str) -> LoadedModel:
        torch.manual_seed(0)
        return wrap_model(self.name, LlamaForCausalLM(tiny_llama_config()).eval(), word_tokenizer())


def _materialize(assets: list, selection: list[str], root: Path, raise_on_error: bool, run_config=None):
    """`selection` of `assets` for the partition DAY, with the storage root `root`, on an ephemeral instance."""
    resources = {
        "io_manager": TableIOManager(root=str(root)),
        "artifacts": ArtifactStorage(root=str(root)),
        "language_model": TinyLanguageModel(name="tiny-llama"),
        "compute": ComputeResource(device="cpu"),
    }
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(TEXT_DATES.name, [DAY])
        return materialize(
            assets, resources=resources, selection=selection, partition_key=DAY, instance=instance,
            run_config=run_config, raise_on_error=raise_on_error,
        )


def capture(root: Path, day_texts: pd.DataFrame, raise_on_error: bool = True):
    """llm_activations of DAY over `day_texts` (stored first as the daily_texts partition it reads)."""
    write_parquet_atomically(day_texts, table_path(root, f"daily_texts/{DAY}"))
    specs = [AssetSpec("daily_texts", partitions_def=TEXT_DATES), llm_activations]
    return _materialize(specs, ["llm_activations"], root, raise_on_error)


def day_store_folder(root: Path) -> Path:
    """The store of DAY's llm_activations partition, as the asset names it."""
    return storage_root(root) / "artifacts" / "llm_activations" / DAY


# --- SAE training: group_saes --------------------------------------------------------------------

CORPUS = "artifacts/activation_corpus/store"
"""Where the tests put the store the SAEs train on, under the storage root."""
SAE_SETTINGS = {"expansion_factor": 2, "k": 4, "total_tokens": 256, "batch_size": 64, "holdout_share": 0.3}


def groups(*chosen: list[int]) -> LayerGrouping:
    """A grouping that trains one SAE per entry of `chosen`."""
    return LayerGrouping({1: [[0]]}, {1: 0.0}, 1, list(chosen), True, 0.2)


TWO_SAES = groups([0], [1])


def train_release(
    root: Path, retrain: bool = False, corpus: str = CORPUS, layer_groups: LayerGrouping = TWO_SAES, **settings
) -> SaeSet:
    """group_saes on the store at `corpus` (under `root`): the release's SaeSet (reused unless `retrain`);
    `settings` override SAE_SETTINGS."""
    artifacts = ArtifactStorage(root=str(root))
    store = ActivationStore(root / corpus)
    with build_asset_context() as context:
        output = group_saes(
            context=context,
            config=GroupSaesConfig(**{**SAE_SETTINGS, **settings}, retrain=retrain),
            activation_corpus=artifacts.store_ref(store),
            massive_activations=find_massive_tokens(store.token_norms()),
            layer_groups=layer_groups,
            compute=ComputeResource(device="cpu"),
            artifacts=artifacts,
            sae_trainer=SaeTrainer(),
        )
    return output.value


def release_folder(root: Path, release: SaeSet) -> Path:
    """The folder of `release`, as group_saes names it."""
    return storage_root(root) / "artifacts" / "group_saes" / "releases" / release.notes["release"]


# --- feature encoding: company_features ----------------------------------------------------------


def prepare_encoding(root: Path) -> SaeSet:
    """What company_features reads for DAY, stored under `root`: the day's store (10 texts of 24 random tokens,
    `tests.assets.test_company_features.capture_day`), a release of one SAE over both layers trained on it,
    the daily_texts partition and the group_saes value."""
    from tests.assets.test_company_features import FIRST_DAY, capture_day, history

    assert FIRST_DAY == DAY
    all_texts = history()
    day_texts = all_texts[all_texts.known_by == pd.Timestamp(DAY)]
    store = capture_day(ArtifactStorage(root=str(root)), all_texts, DAY, seed=0)
    release = train_release(
        root, corpus=store.folder.relative_to(root).as_posix(), layer_groups=groups([0, 1]), holdout_share=0.5
    )
    write_parquet_atomically(day_texts, table_path(root, f"daily_texts/{DAY}"))
    write_json_atomically(release.to_dict(), table_path(root, "group_saes", ".json"))
    return release


def encode(root: Path, pooling: str, raise_on_error: bool = True):
    """company_features (and latent_top_tokens) of DAY at layer 1, pooled by `pooling`."""
    specs = [AssetSpec("daily_texts", partitions_def=TEXT_DATES), AssetSpec("group_saes"), company_features]
    config = {"ops": {"company_features": {"config": {"layer": 1, "pooling": pooling}}}}
    return _materialize(specs, ["company_features", "latent_top_tokens"], root, raise_on_error, config)


# --- a table write: the IO manager storing a DataFrame -------------------------------------------


class ScoresConfig(Config):
    rows: int = 10
    seed: int = 0


def scores(rows: int, seed: int) -> pd.DataFrame:
    """The peer_scores table of `rows` rows drawn with `seed`."""
    return pd.DataFrame({"text_id": [f"T{i:05d}" for i in range(rows)], "score": np.random.default_rng(seed).random(rows)})


@asset
def peer_scores(config: ScoresConfig) -> pd.DataFrame:
    """A table asset: `scores(rows, seed)`, stored by the IO manager as tables/peer_scores.parquet."""
    return scores(config.rows, config.seed)


def write_scores(root: Path, rows: int, seed: int, raise_on_error: bool = True):
    """Materialize peer_scores as `scores(rows, seed)` under `root`."""
    with DagsterInstance.ephemeral() as instance:
        return materialize(
            [peer_scores], resources={"io_manager": TableIOManager(root=str(root))}, instance=instance,
            run_config={"ops": {"peer_scores": {"config": {"rows": rows, "seed": seed}}}}, raise_on_error=raise_on_error,
        )


# --- the kill points (in the child) --------------------------------------------------------------


def _pause(marker: Path) -> NoReturn:
    """Tell the parent this process is at its kill point, and wait there for the SIGKILL."""
    marker.write_text(str(os.getpid()))
    while True:
        time.sleep(60)


def _capture_after_its_first_shard(root: Path, marker: Path) -> None:
    """Capture AFTER in shards of 4 tokens; stop once the first shard is written into the writer's staging
    folder (the model has run, the index, norms and manifest are not written, nothing is renamed)."""
    import assets.activations
    import sae_core.activation_store as activation_store

    writer, save = activation_store.ActivationStoreWriter, activation_store.save_file
    assets.activations.ActivationStoreWriter = functools.partial(writer, shard_tokens=4)

    def save_then_pause(tensors, filename, *args, **kwargs):
        save(tensors, filename, *args, **kwargs)
        if Path(filename).name.startswith("shard_"):
            _pause(marker)

    activation_store.save_file = save_then_pause
    capture(root, AFTER)


def _training_its_second_sae(root: Path, marker: Path) -> None:
    """Retrain the release; stop as the second SAE starts training (the first is saved in the staging release)."""
    train, calls = SaeTrainer.train, itertools.count(1)

    def train_or_pause(self, *args, **kwargs):
        if next(calls) == 2:
            _pause(marker)
        return train(self, *args, **kwargs)

    SaeTrainer.train = train_or_pause
    train_release(root, retrain=True)


def _publishing_while_the_old_release_is_deleted(root: Path, marker: Path) -> None:
    """Retrain the release; stop when publishing it deletes the release it replaces (`sae_core.staging.replace_folder`
    renames the old folder to a `.old-` dot-name and deletes it)."""
    import shutil

    rmtree = shutil.rmtree

    def rmtree_or_pause(path, *args, **kwargs):
        if ".old-" in Path(path).name and Path(path).exists():
            _pause(marker)
        return rmtree(path, *args, **kwargs)

    shutil.rmtree = rmtree_or_pause
    train_release(root, retrain=True)


def _encoding_after_its_first_batch(root: Path, marker: Path) -> None:
    """company_features with max pooling; stop once the first batch of the day's tokens has been encoded."""
    import assets.features

    encode_batches = assets.features.encode_batches

    def encode_then_pause(sae, batches):
        def first_then_pause():
            yield from itertools.islice(batches, 1)
            _pause(marker)  # asked for the next batch: the first one is encoded

        return encode_batches(sae, first_then_pause())

    assets.features.encode_batches = encode_then_pause
    encode(root, "max")


def _table_write_half_way(root: Path, marker: Path) -> None:
    """Store peer_scores of 20,000 rows; stop with half of its parquet bytes written (and synced) to the
    IO manager's staging file."""
    to_parquet = pd.DataFrame.to_parquet

    def half_then_pause(frame, path, *args, **kwargs):
        buffer = io.BytesIO()
        to_parquet(frame, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with open(path, "wb") as file:
            file.write(data[: len(data) // 2])
            file.flush()
            os.fsync(file.fileno())
        _pause(marker)

    pd.DataFrame.to_parquet = half_then_pause
    write_scores(root, rows=20_000, seed=1)


KILL_POINTS = {
    "capture": _capture_after_its_first_shard,
    "training": _training_its_second_sae,
    "publishing": _publishing_while_the_old_release_is_deleted,
    "encoding": _encoding_after_its_first_batch,
    "table_write": _table_write_half_way,
}


# --- the parent ----------------------------------------------------------------------------------


_CHILDREN = multiprocessing.get_context("forkserver")
_CHILDREN.set_forkserver_preload([__name__])  # only heeded before the forkserver starts; else each child imports


def kill_at(fault: str, root: Path, timeout: float = 180.0) -> None:
    """Run the step of `fault` on `root` in a child process and SIGKILL it at its kill point.

    Fails (with the child's output) when the child ends or times out before reaching the kill point: a kill
    point that is never reached proves nothing."""
    marker, log = root.with_name(f"{root.name}.{fault}.paused"), root.with_name(f"{root.name}.{fault}.log")
    child = _CHILDREN.Process(target=_run_to_kill_point, args=(fault, str(root), str(marker), str(log)))
    child.start()
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if not child.is_alive():
                raise AssertionError(f"{fault}: the run ended (exit {child.exitcode}) before its kill point:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{fault}: the run did not reach its kill point in {timeout:.0f} s:\n{_tail(log)}")
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.is_alive():
            child.kill()
        child.join()
    assert child.exitcode == -signal.SIGKILL, f"{fault}: exit {child.exitcode}, not killed:\n{_tail(log)}"


def _run_to_kill_point(fault: str, root: str, marker: str, log: str) -> None:
    """The child: its output to `log`, one torch thread, the step of `fault` until it stops at its kill point."""
    with open(log, "ab") as output:
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
    torch.set_num_threads(1)
    KILL_POINTS[fault](Path(root), Path(marker))
    raise SystemExit(f"{fault}: the run finished without reaching its kill point")


def _tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no output)"
