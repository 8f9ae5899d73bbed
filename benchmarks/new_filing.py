"""What one new 10-K costs against a full rebuild, on a copy of a finished `make demo`.

    python benchmarks/new_filing.py [--home .peerlens] [--dagster-home .dagster_home] [--rebuild]

Copies the demo's storage (hard links: every write replaces a file, never edits one) and instance,
then runs the `filings_refresh` job as the new-filings sensor would: Apple's 10-K of 2024-11-01
(the EDGAR fixture in the sample, served offline) becomes a new dated text in a new day partition,
and everything built from the corpus follows. Prints JSON: the model passes (texts and tokens through
the language model), each step's seconds, the total, and the anchor: with --rebuild, the same job
measured in this run rebuilding the sample's own day of texts (every one of its texts captured again,
the SAE release retrained), else the demo's own run of those steps read from its instance (labelled).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(ROOT / ".peerlens"))
    parser.add_argument("--dagster-home", default=str(ROOT / ".dagster_home"))
    parser.add_argument("--rebuild", action="store_true", help="also time a full rebuild in this run (the anchor)")
    args = parser.parse_args()
    if not (Path(args.home) / "tables" / "current_company_clusters.parquet").exists():
        raise SystemExit(f"{args.home} holds no finished demo: run `make demo` first")

    scratch = Path(tempfile.mkdtemp(prefix="peerlens-new-filing-"))
    home, dagster_home = scratch / "home", scratch / "dagster_home"
    subprocess.run(["cp", "-al", args.home, str(home)], check=True)
    shutil.copytree(args.dagster_home, dagster_home)
    original_steps = _step_seconds(args.dagster_home)
    os.environ["PEERLENS_HOME"], os.environ["DAGSTER_HOME"] = str(home), str(dagster_home)
    try:
        incremental = _refresh_run(home, FILING_DAY)
        report = {"new_filing": incremental}
        if args.rebuild:
            sample_days = [p for p in (home / "artifacts" / "llm_activations").iterdir() if p.name != FILING_DAY]
            for day in sample_days:
                shutil.rmtree(day)
            report["anchor_full_rebuild"] = _refresh_run(home, sample_days[0].name, retrain=True)
            anchor = report["anchor_full_rebuild"]["seconds"]
            report["anchor"] = (
                f"the same job in this run rebuilding the sample's day of texts ({sample_days[0].name}: every text "
                "captured again) and retraining the SAE release"
            )
        else:
            anchor = sum(original_steps.get(step, 0.0) for step in incremental["steps"])
            report["anchor"] = "the demo's own run of the same steps, read from its instance (not this run)"
            report["anchor_seconds"] = round(anchor, 1)
        report["ratio_new_filing_over_anchor"] = round(incremental["seconds"] / anchor, 3)
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


FILING_DAY = "2024-11-01"


def _refresh_run(home: Path, day: str, retrain: bool = False) -> dict:
    """Run filings_refresh for AAPL's 10-K with EDGAR served from the fixture, for the text partition `day`;
    steps, seconds and model passes."""
    from dagster import DagsterInstance

    from definitions import defs
    from peerlens.sources.edgar import EdgarClient, Filing
    from peerlens.sources.sample import default_sample_dir
    from resources import EdgarResource

    fixture = Path(default_sample_dir()) / "edgar" / "10k" / "aapl-10-k-2024-11-01.html"
    filing = Filing(320193, "0000320193-24-000123", "10-K", FILING_DAY, "2024-09-28", "aapl-20240928.htm")
    EdgarClient.latest_10k = lambda self, cik: filing
    EdgarClient.get_text = lambda self, url: fixture.read_text(errors="replace")
    config = {"ops": {"company_descriptions": {"config": {"refresh_from_edgar": ["AAPL"]}}}}
    if retrain:
        config["ops"]["group_saes"] = {"config": {"retrain": True}}
    resources = {"edgar": EdgarResource(user_agent="PeerLens Benchmark bench@example.com")}
    job = defs.resolve_job_def("filings_refresh")
    started = time.perf_counter()
    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("text_dates", [day])  # as the sensor does before requesting the run
        result = job.execute_in_process(run_config=config, instance=instance, resources=resources, partition_key=day)
        steps = {s.step_key: round(s.end_time - s.start_time, 1) for s in instance.get_run_step_stats(result.run_id)}
    seconds = time.perf_counter() - started
    capture = result.asset_materializations_for_node("llm_activations")[0].metadata
    return {
        "success": result.success,
        "seconds": round(seconds, 1),
        "texts_through_the_model": capture["texts_captured"].value,
        "texts_reused": capture["texts_reused"].value,
        "tokens_through_the_model": capture["tokens_through_the_model"].value,
        "steps": steps,
    }


def _step_seconds(dagster_home: str) -> dict[str, float]:
    """Seconds of each step in the instance's latest successful run of it."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
    from dagster._core.instance.ref import InstanceRef

    seconds: dict[str, float] = {}
    with DagsterInstance.from_ref(InstanceRef.from_dir(dagster_home)) as instance:
        for run in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.SUCCESS])):
            for step in instance.get_run_step_stats(run.run_id):
                if step.step_key not in seconds and step.end_time and step.start_time:
                    seconds[step.step_key] = step.end_time - step.start_time
    return seconds


if __name__ == "__main__":
    raise SystemExit(main())
