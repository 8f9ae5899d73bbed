"""Ticker normalisation: one spelling per listed security, so tables from different vendors join.

The sources disagree on share-class separators: constituents.csv and the price table write
`BRK.B` and `BF.B`, Yahoo Finance and SEC's company_tickers.json write `BRK-B` and `BF-B`.
`normalize_ticker` maps both to the dash form, which is also the spelling Yahoo expects.

What a string rule cannot fix: the 2019 cik_ticker.csv drops the class entirely (`BRK` for
Berkshire Hathaway, `BFB` for Brown-Forman). Guessing (`BRK-B` -> `BRK`) would also merge
unrelated tickers, so those rows are matched by CIK instead (see `peerlens.sources.sample.load_industry_codes`).
"""

from __future__ import annotations


def normalize_ticker(ticker: str) -> str:
    """Return the canonical spelling of `ticker`: stripped, upper-case, share classes joined by '-'.

    >>> normalize_ticker(" brk.b ")
    'BRK-B'
    >>> normalize_ticker("BF-B")
    'BF-B'

    Raises ValueError for a non-string or an empty ticker, since either would silently
    join to nothing (or, worse, to every other empty ticker).
    """
    if not isinstance(ticker, str):
        raise ValueError(f"ticker must be a string, got {type(ticker).__name__}: {ticker!r}")
    canonical = ticker.strip().upper().replace(".", "-")
    if not canonical:
        raise ValueError(f"ticker is empty after stripping whitespace: {ticker!r}")
    if any(character.isspace() for character in canonical):
        raise ValueError(f"ticker contains inner whitespace: {ticker!r}")
    return canonical
