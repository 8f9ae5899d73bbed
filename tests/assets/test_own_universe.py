"""Your own universe, end to end: one setting (PEERLENS_UNIVERSE) points `make demo`'s whole graph at the worked
example in examples/universe, with the real default model; without a prices file the clusters, peers and
explanations are still made and the return evaluations are left out.

Each case runs scripts/demo.py in a fresh process, as `make demo` does: the partitions are read from the
universe when the definitions load, which a process that has loaded them already cannot redo.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from peerlens.layout import read_table

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "universe"
def demo_on(universe: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """scripts/demo.py on `universe` with its own storage and Dagster instance, as `make demo PEERLENS_UNIVERSE=…`
    runs it (the universe's run_config.json is the run config); (the process, the storage root)."""
    storage, home = tmp_path / "peerlens", tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PEERLENS_MONTHS")},
        "PEERLENS_UNIVERSE": str(universe), "PEERLENS_HOME": str(storage), "DAGSTER_HOME": str(home),
    }
    process = subprocess.run(
        [sys.executable, "scripts/demo.py"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return process, storage


def peers(storage: Path, ticker: str) -> str:
    command = [sys.executable, "-m", "peerlens.query.cli", "peers", ticker, "--storage", str(storage)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_the_worked_example_runs_the_whole_graph_and_scores_its_clusters_on_its_prices(tmp_path):
    process, storage = demo_on(EXAMPLE, tmp_path)
    assert f"your universe: {EXAMPLE} (run config: {EXAMPLE / 'run_config.json'})" in process.stdout

    texts = read_table(storage, "company_descriptions")
    assert texts.company_id.nunique() == 12 and "NWFR" not in set(texts.ticker)  # no prices: excluded
    current = read_table(storage, "current_company_clusters")
    assert current.ticker.nunique() == 12
    # Returns over 2015-2017 were scored: the months, the scored years and the comparisons exist.
    assert (storage / "tables" / "monthly_returns" / "2017-12-01.parquet").exists()
    comparisons = read_table(storage, "mc_comparisons")
    assert {"sae", "gics_sub_industry", "random"} <= set(comparisons.method) | set(comparisons.baseline)

    answer = peers(storage, "XOM")
    first_peer = answer.split("----\n", 1)[1].split()[1]
    assert first_peer in {"CVX", "COP", "OXY"}, answer


def test_a_universe_without_prices_is_clustered_and_explained_and_not_scored(tmp_path):
    universe = tmp_path / "universe"
    universe.mkdir()
    for kept in ("companies.csv", "run_config.json"):
        shutil.copy(EXAMPLE / kept, universe)
    process, storage = demo_on(universe, tmp_path)
    assert "the source has no prices: leaving out" in process.stdout

    current = read_table(storage, "current_company_clusters")
    assert current.ticker.nunique() == 13 and "NWFR" in set(current.ticker)
    assert (storage / "tables" / "cluster_explanations.parquet").exists()
    for scored in ("monthly_returns", "mc_comparisons", "pairs_backtest", "representation_study"):
        assert not list((storage / "tables").glob(f"{scored}*")), scored
    assert "Peers of NWFR" in peers(storage, "NWFR")
