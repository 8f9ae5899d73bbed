"""`make demo`: materialize the whole PeerLens graph on the offline sample (or on your universe, when
PEERLENS_UNIVERSE names one) and say where the results are.

    scripts/demo.py [--run-config FILE.json]   the run config of `assets.graph_run.materialize_graph`
                                               (default: run_config.json in the universe's folder, if any)
"""

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def universe_run_config() -> Path | None:
    """run_config.json in the PEERLENS_UNIVERSE folder, if it has one: a universe can carry the settings it needs
    (a dozen companies train SAEs on a few thousand tokens, and are judged by looser quality thresholds)."""
    universe = os.environ.get("PEERLENS_UNIVERSE")
    found = Path(universe) / "run_config.json" if universe else None
    return found if found and found.is_file() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", type=Path, help="JSON run config ({'ops': {asset: {'config': ...}}, 'resources': ...})")
    args = parser.parse_args()
    run_config_file = args.run_config or universe_run_config()
    run_config = json.loads(run_config_file.read_text()) if run_config_file else None
    os.environ.setdefault("DAGSTER_HOME", str(ROOT / ".dagster_home"))
    os.environ.setdefault("PEERLENS_HOME", str(ROOT / ".peerlens"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))

    from dagster import DagsterInstance

    from assets.graph_run import materialize_graph
    from definitions import defs

    started = time.perf_counter()
    with DagsterInstance.get() as instance:
        # A rerun recomputes only what changed inputs or code made stale (see materialize_graph).
        results = materialize_graph(defs, instance, run_config, only_stale=True)
    minutes = (time.perf_counter() - started) / 60
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    ok = all(result.success for result in results)
    print(f"\nPeerLens demo {'finished' if ok else 'FAILED'} in {minutes:.1f} min, peak memory {peak_gib:.2f} GiB")
    print(f"  tables and artifacts: {os.environ['PEERLENS_HOME']}/tables, {os.environ['PEERLENS_HOME']}/artifacts")
    print(f"  Dagster instance (runs, metadata, checks): {os.environ['DAGSTER_HOME']}")
    universe = os.environ.get("PEERLENS_UNIVERSE")
    print(f"  open the UI:  make dev{f' PEERLENS_UNIVERSE={universe}' if universe else ''}   (then http://127.0.0.1:3000 → Assets)")
    if universe:
        print(f"  your universe: {universe} (run config: {run_config_file or 'the defaults'})")
        print(f"  ask for peers: .venv/bin/peerlens peers TICKER --storage {os.environ['PEERLENS_HOME']}")
    else:
        print("  ask for peers: .venv/bin/peerlens peers JPM    .venv/bin/peerlens explain XOM CVX")
        print("  as of a date:  .venv/bin/peerlens peers JPM --as-of 2018-01-01")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
