"""`peerlens`: ask the materialized assets for a company's peers, or why two companies are alike; clean up
after killed writers.

    peerlens peers TICKER [-n 10] [--shared 3] [--storage PATH] [--as-of YYYY-MM-DD]
    peerlens explain A B [--shared 5] [--storage PATH]
    peerlens clean [--storage PATH] [--stale-after-hours 24] [--dry-run]

Reads the files a run of the graph wrote (see `peerlens.query.peers`); it needs no Dagster. Errors
(unknown ticker, assets not materialized yet) print one line on stderr and exit with status 1;
usage errors exit with status 2, as argparse does. `clean` removes the staging that killed writers left in
this machine's working copy of the storage root (`sae_core.staging`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from peerlens.query.peers import HOME_ENV, PairExplanation, PeerIndex, PeerList
from peerlens.working_copy import storage_copy
from sae_core.staging import (
    STALE_AFTER_SECONDS,
    Action,
    Leftover,
    clean_leftovers,
    plan_rows,
    plan_totals,
)

SIMILARITY_NOTE = "cosine of specificity-weighted SAE company features"
NAME_WIDTH = 28
TOKENS_WIDTH = 64


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Plain-text columns, two spaces apart; the columns in `right` right-aligned (numbers)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(cell).rjust(width) if k in right else str(cell).ljust(width)
            for k, (cell, width) in enumerate(zip(cells, widths))
        ]
        return "  ".join(padded).rstrip()

    return [line(headers), line(["-" * width for width in widths]), *(line(row) for row in rows)]


def _label(ticker: str, name: str) -> str:
    return f"{ticker} ({name})" if name else ticker


def _first_hit(top_tokens: str) -> str:
    """The strongest token in context: the first of the ' | '-joined hits."""
    return top_tokens.split(" | ")[0]


def format_peers(result: PeerList) -> str:
    """The peer table: one row per shared latent, the peer's columns on its first row only."""
    rows = []
    for rank, peer in enumerate(result.peers, start=1):
        lead = [str(rank), peer.ticker, _clip(peer.name, NAME_WIDTH), f"{peer.similarity:.3f}"]
        if not peer.shared:
            rows.append([*lead, "", "", "(no shared specific latent)"])
        for k, latent in enumerate(peer.shared):
            cells = lead if k == 0 else ["", "", "", ""]
            rows.append(
                [*cells, str(latent.latent), f"{latent.share:.1%}", _clip(_first_hit(latent.top_tokens), TOKENS_WIDTH)]
            )
    headers = ["rank", "ticker", "name", "similarity", "latent", "share", "strongest token of the latent"]
    lines = [
        f"Peers of {_label(result.ticker, result.name)} among {result.n_companies} companies",
        f"similarity: {SIMILARITY_NOTE}; share: the part of it that a shared latent carries",
        "",
        *_table(headers, rows, right={0, 3, 4, 5}),
    ]
    return "\n".join(lines) + "\n"


def format_pair(result: PairExplanation) -> str:
    """Similarity and ranks, the shared latents with their descriptions, and both clusterings."""
    a, b = result.a, result.b
    lines = [
        f"Why {_label(a, result.name_a)} and {_label(b, result.name_b)} are alike",
        f"similarity {result.similarity:.3f} ({SIMILARITY_NOTE}, {result.n_companies} companies)",
        f"{b} is {a}'s peer #{result.rank_of_b}; {a} is {b}'s peer #{result.rank_of_a}",
        "",
    ]
    if result.shared:
        lines.append(f"The {len(result.shared)} latents below carry {result.shown_share:.1%} of the similarity.")
        rows = [
            [
                str(latent.latent),
                f"{latent.share:.1%}",
                f"{latent.contribution:.4f}",
                f"{latent.value_a:.4g}",
                f"{latent.value_b:.4g}",
                _clip(latent.top_companies, NAME_WIDTH + 12),
            ]
            for latent in result.shared
        ]
        headers = ["latent", "share", "contribution", f"{a} value", f"{b} value", "top companies"]
        lines += ["", *_table(headers, rows, right={0, 1, 2, 3, 4}), ""]
        lines.append("What each latent reads (its top-activating tokens, in context):")
        lines += [f"  {latent.latent}: {' '.join(latent.top_tokens.split())}" for latent in result.shared]
    else:
        lines.append("They share no specific latent: nothing but common wording makes them alike.")
    if result.clusters:
        rows = [
            [m.method, str(m.cluster_a), str(m.cluster_b), "yes" if m.same else "no"] for m in result.clusters
        ]
        lines += ["", "Clusters per method:", *_table(["method", a, b, "same cluster"], rows, right={1, 2})]
    return "\n".join(lines) + "\n"


def format_cleanup(plan: list[tuple[Leftover, Action]], root: Path, dry_run: bool) -> str:
    """One row per leftover under `root` (what is done with it, and why), then the totals."""
    if not plan:
        return f"No leftovers of killed writers under {root}.\n"
    rows = [[row["action"], row["kind"], f"{row['mib']:.1f} MiB", f"{row['idle_hours']:.1f} h", row["writer"], row["path"]]
            for row in plan_rows(plan, root)]
    totals = plan_totals(plan)
    lines = [
        f"Leftovers of writers under {root}:",
        "",
        *_table(["action", "kind", "size", "idle", "writer", "path"], rows, right={2, 3}),
        "",
        f"{'Would remove' if dry_run else 'Removed'} {totals['removed']} ({totals['removed_mib']:.1f} MiB), "
        f"{'would restore' if dry_run else 'restored'} {totals['restored']} folder(s) to their names; "
        f"kept {totals['kept']} whose writer may still be at work.",
    ]
    return "\n".join(lines) + "\n"


def clean(storage: str | None, stale_after_hours: float, dry_run: bool) -> str:
    """Find, plan and (unless `dry_run`) carry out the cleanup of the working copy of `storage`."""
    if stale_after_hours <= 0:
        raise ValueError(f"--stale-after-hours must be positive, not {stale_after_hours}")
    root = storage_copy(storage).local
    if not root.is_dir():
        raise FileNotFoundError(f"no storage root at {root}")
    return format_cleanup(clean_leftovers(root, stale_after_hours * 3600, dry_run), root, dry_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peerlens",
        description="Peers of a company, and why two companies are alike, from the materialized PeerLens assets.",
    )
    storage = argparse.ArgumentParser(add_help=False)
    storage.add_argument(
        "--storage",
        default=None,
        help=f"storage root the assets were materialized to, a folder or s3:// URI (default: ${HOME_ENV}, else ./.peerlens)",
    )
    storage.add_argument(
        "--as-of",
        default=None,
        help="answer as of this date (YYYY-MM-DD): each company by its latest text known before it, and the "
        "clusters dated on or before it (default: today, the latest texts)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    peers = commands.add_parser("peers", parents=[storage], help="the most similar companies to TICKER")
    peers.add_argument("ticker")
    peers.add_argument("-n", type=int, default=10, help="peers listed (default 10)")
    peers.add_argument("--shared", type=int, default=3, help="shared latents per peer (default 3)")
    explain = commands.add_parser("explain", parents=[storage], help="why companies A and B are alike")
    explain.add_argument("a")
    explain.add_argument("b")
    explain.add_argument("--shared", type=int, default=5, help="shared latents listed (default 5)")
    cleanup = commands.add_parser(
        "clean", help="remove what killed writers left staged, and put back a folder a killed replace left missing"
    )
    cleanup.add_argument(
        "--storage", default=None,
        help=f"storage root whose working copy on this machine is cleaned (default: ${HOME_ENV}, else ./.peerlens)",
    )
    cleanup.add_argument(
        "--stale-after-hours", type=float, default=STALE_AFTER_SECONDS / 3600,
        help="a leftover whose writer cannot be asked (another host, an old name) goes when untouched this long "
        "(default 24); one whose writer is gone from this host goes at once",
    )
    cleanup.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 1 for a query error)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "clean":
            text = clean(args.storage, args.stale_after_hours, args.dry_run)
        else:
            index = PeerIndex.load(args.storage, as_of=args.as_of)
            if args.command == "peers":
                text = format_peers(index.peers(args.ticker, n=args.n, n_shared=args.shared))
            else:
                text = format_pair(index.explain_pair(args.a, args.b, n_shared=args.shared))
    except (FileNotFoundError, ValueError) as error:
        print(f"peerlens: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
