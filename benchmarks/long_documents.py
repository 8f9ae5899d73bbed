"""What reading a whole 10-K Item 1 in overlapping windows costs per 1,000 of its tokens, against one pass.

Target: the Item 1 of one EDGAR fixture of the sample (`peerlens.sources.edgar.extract_item1_business`),
captured whole with the default model (CPU) and LanguageModelResource's default window and stride, every
layer into an fp16 store on disk, as the llm_activations asset does.
Anchor, measured in the same run: its first 512 tokens captured in one pass the same way (the capture of
earlier versions, which cut every text there).
Reported: seconds, document tokens per second and seconds per 1,000 document tokens of both, and the
ratio of the costs per token: about the overlap factor window / stride, plus the longer attention.
`--also WINDOW/STRIDE` measures other settings in the same run. Prints one JSON object as its last line.

    .venv/bin/python benchmarks/long_documents.py [--fixture 0001376474-16-000635.html] [--repeats 3]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from peerlens.sources.edgar import extract_item1_business
from peerlens.sources.sample import default_sample_dir
from resources import LanguageModelResource
from sae_core.activation_store import STORE_DTYPE, ActivationStoreWriter
from sae_core.capture import capture_documents, load_model, tokenize
from sae_core.windows import CaptureWindows

ANCHOR_TOKENS = 512


def capture_seconds(model, ids: list[int], windows: CaptureWindows, batch_tokens: int) -> float:
    """Seconds to capture one document as `windows` read it (every layer, fp16) into a store on disk."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        writer = ActivationStoreWriter(Path(folder) / "store", model.n_layers, model.d_model)
        batches = capture_documents(model, [ids], batch_tokens=batch_tokens, dtype=STORE_DTYPE, windows=windows)
        for _, captured in batches:
            writer.add(captured.activations, ["doc"] * captured.token_id.numel(), captured.position, captured.token_id)
        store = writer.close()
        seconds = time.perf_counter() - started
    if store.n_tokens != windows.cost([len(ids)]).tokens:
        raise RuntimeError(f"stored {store.n_tokens} tokens, expected {windows.cost([len(ids)]).tokens}")
    return seconds


def summary(seconds: list[float], windows: CaptureWindows, n_tokens: int) -> dict:
    """Timings of one setting: the fastest run, per document token stored."""
    cost, best = windows.cost([n_tokens]), min(seconds)
    return {
        **windows.settings(),
        "document_tokens": cost.tokens,
        "windows": cost.windows,
        "tokens_run": cost.tokens_run,
        "overlap_factor": round(cost.tokens_run / cost.tokens, 3),
        "seconds": round(best, 2),
        "document_tokens_per_s": round(cost.tokens / best, 1),
        "seconds_per_1000_document_tokens": round(1000 * best / cost.tokens, 3),
        "seconds_of_each_run": [round(s, 2) for s in seconds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", default="0001376474-16-000635.html", help="a file of shared/data/edgar/10k/")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--also", action="append", default=[], metavar="WINDOW/STRIDE", help="other settings to time")
    args = parser.parse_args()

    resource = LanguageModelResource()
    settings = [resource.capture_windows()] + [CaptureWindows(*map(int, s.split("/"))) for s in args.also]
    html = (default_sample_dir() / "edgar" / "10k" / args.fixture).read_text(encoding="utf-8", errors="replace")
    model = load_model(resource.name)
    (ids,) = tokenize(model.tokenizer, [extract_item1_business(html, args.fixture)], None)
    one_pass = CaptureWindows(ANCHOR_TOKENS, ANCHOR_TOKENS, max_document_tokens=ANCHOR_TOKENS)
    capture_seconds(model, ids, one_pass, resource.batch_tokens)  # warm-up
    anchor, timed = [], [[] for _ in settings]
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits every setting alike
        anchor.append(capture_seconds(model, ids, one_pass, resource.batch_tokens))
        for windows, seconds in zip(settings, timed):
            seconds.append(capture_seconds(model, ids, windows, resource.batch_tokens))
    anchor_result = summary(anchor, one_pass, len(ids))
    results = [summary(seconds, windows, len(ids)) for windows, seconds in zip(settings, timed)]
    for result in results:
        result["cost_per_token_vs_anchor"] = round(
            result["seconds_per_1000_document_tokens"] / anchor_result["seconds_per_1000_document_tokens"], 3
        )
    print(json.dumps({
        "model": model.name,
        "fixture": args.fixture,
        "threads": torch.get_num_threads(),
        "default": results[0],
        "anchor": f"the first {ANCHOR_TOKENS} tokens of the same Item 1 in one pass, this run",
        "anchor_result": anchor_result,
        "also": results[1:],
    }))


if __name__ == "__main__":
    main()
