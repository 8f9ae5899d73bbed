"""`make demo`: materialize the whole PeerLens graph on the offline sample (or on your universe, when
PEERLENS_UNIVERSE names one) and say where the results are.

    scripts/demo.py [--run-config FILE.json]   the run config of `assets.graph_run.materialize_graph`
"""

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", type=Path, help="JSON run config ({'ops': {asset: {'config': ...}}, 'resources': ...})")
    args = parser.parse_args()
    run_config = json.loads(args.run_config.read_text()) if args.run_config else None
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
    print("  open the UI:  make dev   (then http://127.0.0.1:3000 → Assets)")
    if os.environ.get("PEERLENS_UNIVERSE"):
        print(f"  your universe: {os.environ['PEERLENS_UNIVERSE']}")
        print(f"  ask for peers: .venv/bin/peerlens peers TICKER --storage {os.environ['PEERLENS_HOME']}")
    else:
        print("  ask for peers: .venv/bin/peerlens peers JPM    .venv/bin/peerlens explain XOM CVX")
        print("  as of a date:  .venv/bin/peerlens peers JPM --as-of 2018-01-01")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
