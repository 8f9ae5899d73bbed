"""Peak memory of SAE training, feature encoding and layer distances as the corpus grows 10×.

    python benchmarks/memory_scaling.py [--tokens 131072] [--scale 10] [--mode stream] [--workdir DIR]

Builds two synthetic activation stores (sae_core.activation_store, fp16, 4,096-token shards, as capture
writes them) of `--tokens` and `--scale` × `--tokens` tokens, documents of 300 tokens, `--layers` layers of
width `--d-model` (a rank-16 signal per layer plus noise, so an SAE has something to learn). Then, for each
store in a fresh subprocess (nothing inherited, nothing cached), it runs what the assets run:

    training    one Group-SAE over layers 0..3 (one random layer per token, `StoreRows`): `--mode stream`
                through the shuffle buffer, `--mode memory` gathered into one tensor (the in-memory path),
                a fixed budget of 64 steps × 1,024 tokens; then held-out FVU shard by shard
                (`store_layer_metrics`, 10% of documents held out)
    encoding    every token's code at layer 2 pooled per document (`sae_core.features.pool_batches`
                over the layer read shard by shard)
    distances   D̄ over the first 50k tokens (`sae_core.distances.store_distances`, as layer_distances)

and reads the process's peak RSS (/proc/self/status VmHWM) after each stage. It prints the peaks and
peak(10×) / peak(1×), the figure the issue bounds at 1.5.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from sae_core.activation_store import ActivationStore, ActivationStoreWriter  # noqa: E402

TOKENS_PER_DOCUMENT, SHARD_TOKENS, GROUP, FEATURE_LAYER = 300, 4096, (0, 1, 2, 3), 2


def build_store(folder: Path, n_tokens: int, n_layers: int, d_model: int) -> ActivationStore:
    """A store of `n_tokens` synthetic tokens: x_{t,l} = c_t B_l + 0.3 ε + 2, c_t ∈ R^16, written 4,096 at a time."""
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(n_layers, 16, d_model, generator=generator)
    writer = ActivationStoreWriter(folder, n_layers, d_model, metadata={"model": "synthetic"}, shard_tokens=SHARD_TOKENS)
    for start in range(0, n_tokens, SHARD_TOKENS):
        n = min(SHARD_TOKENS, n_tokens - start)
        codes = torch.randn(n, 16, generator=generator)
        activations = torch.einsum("nr,lrd->lnd", codes, basis) + 0.3 * torch.randn(n_layers, n, d_model, generator=generator) + 2
        token = torch.arange(start, start + n)
        writer.add(activations, [f"doc{t // TOKENS_PER_DOCUMENT:06d}" for t in token.tolist()], token % TOKENS_PER_DOCUMENT, token)
    return writer.close()


def peak_mib() -> float:
    """This process's peak RSS: VmHWM of /proc/self/status (its own address space's high-water mark; getrusage's
    ru_maxrss would carry over the RSS of the parent that forked it), else ru_maxrss."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(folder: str, mode: str) -> dict:
    """Training, encoding and distances on the store at `folder`, in this process; the peak RSS after each."""
    from sae_core.activation_stream import StoreRows, masked_layer_chunks, rebatch
    from sae_core.config import SaeConfig, TrainConfig
    from sae_core.distances import store_distances
    from sae_core.features import pool_batches
    from sae_core.massive_activations import MassiveTokens
    from sae_core.token_split import store_layer_metrics, token_split
    from sae_core.train import train_sae

    torch.set_num_threads(2)
    store = ActivationStore(folder)
    peaks, started = {"start": peak_mib()}, time.perf_counter()
    keep_all = MassiveTokens(20.0, "keep", store.n_tokens, (1.0,) * store.n_layers, (0,) * store.n_layers, (), (), ())
    split = token_split(store.index.document, 0.1, keep_all)
    rows = StoreRows(store, GROUP, split.train, torch.Generator().manual_seed(0))
    data = rows if mode == "stream" else rows.materialize()
    sae_cfg = SaeConfig(d_in=store.d_model, expansion_factor=4, k=16)
    sae = train_sae(data, sae_cfg, TrainConfig(batch_size=1024, total_tokens=64 * 1024)).sae
    del data
    fvu = store_layer_metrics(sae, store, FEATURE_LAYER, split).fvu
    peaks["training"] = peak_mib()

    document = torch.from_numpy(pd.factorize(store.index.document)[0])
    n_docs = int(document.max()) + 1
    all_tokens = torch.ones(store.n_tokens, dtype=torch.bool)
    batches = zip(rebatch(masked_layer_chunks(store, FEATURE_LAYER, all_tokens), 8192), document.split(8192))
    pooled = pool_batches(sae, batches, n_docs, "mean")
    peaks["encoding"] = peak_mib()

    distances, averaged = store_distances(store, all_tokens, max_tokens=50_000)
    peaks["distances"] = peak_mib()
    return {"tokens": store.n_tokens, "fvu": round(fvu, 4), "documents_pooled": len(pooled),
            "distance_tokens": averaged, "seconds": round(time.perf_counter() - started, 1), "peak_mib": peaks}


def run_fresh(folder: Path, mode: str) -> dict:
    """`measure` in a fresh Python process; its JSON result."""
    output = subprocess.run(
        [sys.executable, __file__, "--measure", str(folder), "--mode", mode],
        check=True, capture_output=True, text=True, cwd=PROJECT_ROOT,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=131_072, help="tokens of the 1× corpus")
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--mode", choices=("stream", "memory"), default="stream")
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores go (default: a temp folder)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.mode)))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        results = {}
        for factor in (1, args.scale):
            folder = Path(workdir) / f"store_{factor}x"
            store = build_store(folder, args.tokens * factor, args.layers, args.d_model)
            size = sum(path.stat().st_size for path in folder.iterdir()) / 2**20
            print(f"{factor}x store: {store.n_tokens:,} tokens, {len(store.manifest['shards'])} shards, {size:,.0f} MiB, "
                  f"{store.bytes_per_token['total']} bytes per token", flush=True)
            results[factor] = run_fresh(folder, args.mode)
            print(f"{factor}x ({args.mode}): {json.dumps(results[factor])}", flush=True)
    one, many = results[1]["peak_mib"], results[args.scale]["peak_mib"]
    for stage in ("training", "encoding", "distances"):
        print(f"peak RSS after {stage:<9}  1x {one[stage]:7.0f} MiB   {args.scale}x {many[stage]:7.0f} MiB   "
              f"ratio {many[stage] / one[stage]:.3f}")
    ratio = many["distances"] / one["distances"]
    print(f"peak memory ratio {args.scale}x / 1x ({args.mode}): {ratio:.3f} (target < 1.5: {'met' if ratio < 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
