"""Specification of the `peerlens` console script (peerlens.query.cli), run through main([...])."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from peerlens.query.cli import main
from peerlens.query.peers import MATERIALIZED_FILES
from tests.peerlens.query.test_peers import write_storage


@pytest.fixture
def storage(tmp_path):
    return write_storage(tmp_path / "store")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def table_rows(out: str) -> list[list[str]]:
    """The rows under the '----' rule of the first table, split on runs of two or more spaces."""
    lines = out.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("----")) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append([cell.strip() for cell in line.strip().split("  ") if cell.strip()])
    return rows


def test_peers_prints_a_table_of_the_nearest_companies_with_their_shared_latents(storage, capsys):
    status, out, err = run(capsys, "peers", "jpm", "-n", "2", "--storage", str(storage))
    assert status == 0 and err == ""
    assert out.startswith("Peers of JPM (JPMorgan Chase & Co.) among 7 companies\n")
    rows = table_rows(out)
    # WFC (cards, banking), then BAC (banking); continuation rows hold only latent, share, tokens.
    assert rows[0][:2] == ["1", "WFC"] and rows[0][4] == "4" and rows[0][6] == "…credit «cards» for…"
    assert rows[1][0] == "1" and rows[1][2] == "…commercial «banking» and…"  # latent 1 under WFC
    assert rows[2][:2] == ["2", "BAC"] and rows[2][4:6] == ["1", "100.0%"]
    assert len(rows) == 3


def test_explain_prints_similarity_ranks_latents_descriptions_and_clusters(storage, capsys):
    status, out, err = run(capsys, "explain", "JPM", "WFC", "--storage", str(storage))
    assert status == 0 and err == ""
    assert out.startswith("Why JPM (JPMorgan Chase & Co.) and WFC (Wells Fargo & Company) are alike\n")
    assert "WFC is JPM's peer #1; JPM is WFC's peer #1" in out
    assert "The 2 latents below carry 100.0% of the similarity." in out
    assert [row[0] for row in table_rows(out)] == ["4", "1"]
    assert "  4: …credit «cards» for…" in out and "  1: …commercial «banking» and…" in out
    clusters = out[out.index("Clusters per method:") :]
    rows = [line.split() for line in clusters.splitlines()[3:]]
    assert rows == [["sae", "1", "1", "yes"], ["sic4", "11", "14", "no"]]


def test_an_unknown_ticker_exits_1_with_one_line_on_stderr(storage, capsys):
    status, out, err = run(capsys, "peers", "JMP", "--storage", str(storage))
    assert status == 1 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("peerlens: error: unknown ticker 'JMP'") and "did you mean JPM" in err
    status, _, err = run(capsys, "explain", "JPM", "EXXON", "--storage", str(storage))
    assert status == 1 and "did you mean XOM" in err


def test_missing_assets_exit_1_naming_the_asset_and_make_demo(storage, capsys):
    shutil.rmtree(storage / MATERIALIZED_FILES["company_features"])
    status, out, err = run(capsys, "peers", "JPM", "--storage", str(storage))
    assert status == 1 and out == ""
    assert err.count("\n") == 1
    assert "assets not materialized" in err and "company_features" in err and "make demo" in err


def test_storage_comes_from_peerlens_home_when_not_given(storage, capsys, monkeypatch):
    monkeypatch.setenv("PEERLENS_HOME", str(storage))
    status, out, _ = run(capsys, "peers", "BAC", "-n", "1")
    assert status == 0 and table_rows(out)[0][:2] == ["1", "JPM"]


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as exit_info:
        main(["peers"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["peers", "JPM", "-n", "three"])
    assert exit_info.value.code == 2


def test_the_console_script_is_installed_and_the_cli_never_imports_dagster():
    scripts = {entry.name: entry.value for entry in entry_points(group="console_scripts")}
    assert scripts.get("peerlens") == "peerlens.query.cli:main"
    probe = "import sys, peerlens.query.cli, peerlens.query.peers; print('dagster' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"
