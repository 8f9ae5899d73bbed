"""Your own universe: companies and (optionally) their daily prices, from a folder of CSV or parquet files.

The folder holds

    companies.csv | companies.parquet   one row per text a company published (required)
    prices.csv    | prices.parquet      one row per (ticker, trading day) (optional)

companies columns (COMPANY_COLUMNS are required, OPTIONAL_COMPANY_COLUMNS may be left out or left empty):

    id                 your permanent id of the company ("acme", "0001", …); rows with one id are one company's texts
    ticker             its ticker when the text was published (prices are joined on it)
    name               company name
    description        the business description: any language, plain text (markup is kept as text)
    known_by           YYYY-MM-DD, the day the text became public: nothing scored on a period that starts
                       on or before it may use it
    source             what the text is ("10-K 2019", "profile v3"); default "companies@<known_by>"
    cik                SEC Central Index Key (positive integer); the company's id becomes cik:<CIK>
    sic                4-digit SIC code
    gics_sector        GICS sector name
    gics_sub_industry  GICS sub-industry name

prices columns: date (YYYY-MM-DD), ticker, close; optional open, high, low, volume.

Every problem is an error that names the file, the row (counted from 1, the header not counted) and
the column; nothing is dropped quietly. A ticker may pass from one id to another over time (a ticker
reused): the evaluation's returns follow whoever holds it (`peerlens.similarity.point_in_time`).
"""

from __future__ import annotations

import csv
import difflib
from pathlib import Path

import pandas as pd

from peerlens.sources.returns import PRICE_COLUMNS
from peerlens.sources.sample import LoadedTable, sic_division
from peerlens.sources.texts import texts_from_records
from peerlens.sources.tickers import normalize_ticker
from sae_core.text import is_blank

UNIVERSE_ENV = "PEERLENS_UNIVERSE"
COMPANIES, PRICES = "companies", "prices"
COMPANY_COLUMNS = ("id", "ticker", "name", "description", "known_by")
OPTIONAL_COMPANY_COLUMNS = ("source", "cik", "sic", "gics_sector", "gics_sub_industry")
PRICE_REQUIRED = ("date", "ticker", "close")
PRICE_OPTIONAL = ("open", "high", "low", "volume")
CODE_COLUMNS = ("ticker", "known_by", "cik", "sic4", "sic2", "sic_division", "sic_source", "gics_sector", "gics_sub_industry")
"""industry_codes' columns, the same for the sample and your universe: one row per (ticker, known_by), known_by NaT
for codes that hold on every date (`peerlens.similarity.point_in_time.codes_as_of`)."""


class UniverseError(ValueError):
    """A universe file that cannot be read as documented; the message names the file, row and column."""


def universe_file(folder: str | Path, stem: str, required: bool = True) -> Path | None:
    """`folder`/`stem`.csv or .parquet (exactly one of them); None when neither exists and not `required`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UniverseError(f"universe folder {folder} does not exist (set by ${UNIVERSE_ENV})")
    found = [folder / f"{stem}.{suffix}" for suffix in ("csv", "parquet") if (folder / f"{stem}.{suffix}").exists()]
    if len(found) > 1:
        raise UniverseError(f"universe folder {folder} holds both {found[0].name} and {found[1].name}: keep one")
    if not found and required:
        raise UniverseError(f"universe folder {folder} has no {stem}.csv or {stem}.parquet")
    return found[0] if found else None


def read_table(path: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> pd.DataFrame:
    """`path` (CSV, UTF-8, or parquet) with every value as a string ('' when empty), columns checked.

    A missing required column or a column that is neither required nor optional (a misspelling would
    otherwise drop its values) is an error that suggests the nearest known name.
    """
    try:
        if path.suffix == ".parquet":
            frame = _as_text(pd.read_parquet(path))
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
            frame.columns = _csv_header(path) or frame.columns  # pandas renames a repeated column "x.1"
    except UnicodeDecodeError:
        data = path.read_bytes()
        try:  # the parser's offset is into its buffer; decoding the whole file gives the file's
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            raise UniverseError(f"{path} line {line}: not UTF-8 text (byte {data[error.start]:#x}); save it as UTF-8") from None
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as error:
        raise UniverseError(f"{path}: cannot be read as a {path.suffix[1:]} table: {error}") from None
    frame.columns = [str(column).strip() for column in frame.columns]
    known = (*required, *optional)
    problems = [f"column {name!r} is missing{_nearest(name, frame.columns)}" for name in required if name not in frame.columns]
    problems += [f"column {name!r} is not a known column{_nearest(name, known)}" for name in frame.columns if name not in known]
    repeated = sorted({name for name in frame.columns if list(frame.columns).count(name) > 1})
    problems += [f"column {name!r} appears twice" for name in repeated]
    if problems:
        raise UniverseError(f"{path}: " + "; ".join(problems) + f". Columns: required {list(required)}, optional {list(optional)}")
    frame = frame.apply(lambda column: column.str.strip())
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="row")
    return frame


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as stream:
        return next(csv.reader(stream), [])


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    # A parquet file's typed columns as the strings a CSV would hold: dates as YYYY-MM-DD, missing as "".
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            values = frame[column]
            midnight = values.isna() | (values == values.dt.normalize())
            frame[column] = values.dt.strftime("%Y-%m-%d").where(midnight, values.astype(str))
    return frame.astype(object).where(frame.notna(), "").astype(str)


def _nearest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name.lower(), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fail(path: Path, rows: pd.Index, column: str, problem: str, values: pd.Series | None = None) -> None:
    shown = [f"row {row}" + (f" ({values[row]!r:.60})" if values is not None else "") for row in rows[:5]]
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    raise UniverseError(f"{path} column {column!r}: {problem} in {', '.join(shown)}{more}")


def _require_values(path: Path, frame: pd.DataFrame, columns) -> None:
    for column in columns:
        empty = frame.index[frame[column].map(lambda value: is_blank(value))]
        if len(empty):
            _fail(path, empty, column, "empty value (nothing but whitespace, invisible characters or markup)")


def _parse_dates(path: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    parsed = pd.to_datetime(frame[column], format="%Y-%m-%d", errors="coerce")
    bad = frame.index[parsed.isna()]
    if len(bad):
        _fail(path, bad, column, "not a YYYY-MM-DD date", frame[column])
    return parsed.astype("datetime64[ns]")


def _parse_tickers(path: Path, frame: pd.DataFrame) -> pd.Series:
    def canonical(value: str) -> str | None:
        try:
            return normalize_ticker(value)
        except ValueError:
            return None

    tickers = frame.ticker.map(canonical)
    bad = frame.index[tickers.isna() | ~tickers.fillna("").str.fullmatch(r"[A-Z0-9][A-Z0-9-]*")]
    if len(bad):
        _fail(path, bad, "ticker", "not a ticker (letters, digits, '-' and '.' only)", frame.ticker)
    return tickers


def _parse_optional_ints(path: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(pd.NA, index=frame.index, dtype="Int64")
    values = frame[column].str.replace(r"\.0$", "", regex=True)  # parquet integers read back as "123.0"
    # Leading zeros are how EDGAR writes a CIK ('0000320193'): the number is what names the company.
    bad = frame.index[(values != "") & ~values.str.fullmatch(r"0*[1-9]\d*")]
    if len(bad):
        _fail(path, bad, column, "not a positive integer", frame[column])
    return pd.to_numeric(values.where(values != ""), errors="coerce").astype("Int64")


def _repeated_rows(frame: pd.DataFrame, columns: list[str]) -> pd.Index:
    return frame.index[frame.duplicated(columns, keep=False)]


def _checked_ids(path: Path, frame: pd.DataFrame, keyed: pd.DataFrame) -> pd.DataFrame:
    """`keyed` (id, source, ticker, known_by, cik per row of `frame`) with every row of an id given its CIK, after
    checking that (id, source) is unique, an id has at most one CIK and a CIK one id, and no ticker is held by
    two ids on one day."""
    repeats = _repeated_rows(keyed, ["id", "source"])
    if len(repeats):
        _fail(path, repeats, "id", "the same company and source (or known_by, when no source) on more than one row",
              frame["id"])
    cik_per_id = keyed.dropna(subset=["cik"]).groupby("id").cik.nunique()
    two_ciks = keyed.index[keyed.id.isin(cik_per_id.index[cik_per_id > 1])]
    if len(two_ciks):
        _fail(path, two_ciks, "cik", "one id with different CIKs", frame["cik"])
    ids_per_cik = keyed.dropna(subset=["cik"]).groupby("cik").id.nunique()
    two_ids = keyed.index[keyed.cik.isin(ids_per_cik.index[ids_per_cik > 1])]
    if len(two_ids):
        _fail(path, two_ids, "id", "one CIK under different ids", frame["id"])
    # A company without a CIK in one row but with it in another is one company: every row gets its CIK.
    keyed = keyed.assign(cik=keyed.id.map(keyed.dropna(subset=["cik"]).groupby("id").cik.first()).astype("Int64"))
    same_day = keyed.drop_duplicates(["id", "ticker", "known_by"])
    clash = same_day[same_day.duplicated(["ticker", "known_by"], keep=False)].index
    if len(clash):
        _fail(path, clash, "ticker", "one ticker held by different ids on the same known_by day", frame.ticker)
    return keyed


def load_universe_companies(folder: str | Path) -> LoadedTable:
    """companies.csv|parquet as a text history (`peerlens.sources.texts.TEXT_COLUMNS`) plus, per text, the
    optional codes (sic4, gics_sector, gics_sub_industry); rule_counts say what the file holds.

    Errors (UniverseError, naming file, rows and column): a missing or unknown column, an empty required
    value, a date that is not YYYY-MM-DD, a CIK that is not a positive integer, a SIC that is not 4
    digits, two rows with one (id, source) or one (id, known_by) and no source to tell them apart, one id
    with two CIKs, one CIK under two ids, one ticker held by two ids on the same day.
    """
    path = universe_file(folder, COMPANIES)
    frame = read_table(path, COMPANY_COLUMNS, OPTIONAL_COMPANY_COLUMNS)
    if frame.empty:
        raise UniverseError(f"{path}: no rows (a universe needs at least one company)")
    _require_values(path, frame, COMPANY_COLUMNS)
    known_by = _parse_dates(path, frame, "known_by")
    tickers = _parse_tickers(path, frame)
    ciks = _parse_optional_ints(path, frame, "cik")
    sic = frame.get("sic", pd.Series("", index=frame.index))
    bad_sic = frame.index[(sic != "") & ~sic.str.fullmatch(r"\d{4}")]
    if len(bad_sic):
        _fail(path, bad_sic, "sic", "not a 4-digit SIC code", sic)
    source = frame.get("source", pd.Series("", index=frame.index))
    source = source.where(source != "", f"{path.stem}@" + known_by.dt.strftime("%Y-%m-%d"))

    keyed = _checked_ids(path, frame, pd.DataFrame(
        {"id": frame["id"], "source": source, "ticker": tickers, "known_by": known_by, "cik": ciks}
    ))
    records = pd.DataFrame({
        "cik": keyed.cik, "ticker": tickers, "name": frame["name"], "description": frame.description,
        "source": source, "known_by": known_by,
    })
    texts = texts_from_records(records.reset_index(drop=True), str(path), ids=("id:" + frame["id"]).reset_index(drop=True))
    codes = pd.DataFrame({
        "sic4": sic.replace("", pd.NA),
        **{column: frame.get(column, pd.Series("", index=frame.index)).replace("", pd.NA)
           for column in ("gics_sector", "gics_sub_industry")},
    }).reset_index(drop=True)
    texts = pd.concat([texts, codes.astype("string")], axis=1)
    reused = keyed.groupby("ticker").id.nunique()
    counts = {
        "texts": len(texts),
        "companies": int(texts.company_id.nunique()),
        "companies_with_cik": int(texts.dropna(subset=["cik"]).company_id.nunique()),
        "tickers_reused_by_another_id": int((reused > 1).sum()),
        **{f"texts_with_{column}": int(codes[column].notna().sum()) for column in codes},
    }
    return LoadedTable(texts, counts, {"tickers_reused_by_another_id": sorted(reused.index[reused > 1])})


def universe_industry_codes(texts: pd.DataFrame, companies: pd.DataFrame) -> LoadedTable:
    """industry_codes (CODE_COLUMNS) of the tickers of `companies` (ticker, cik), dated: a row for each day a
    text carrying the ticker became known, with that text's codes (of two texts on one day, the one whose source
    sorts last). A clustering dated D so uses the codes of the texts known before D, as it uses their words; a
    code left empty on a text is <NA> (the company is its own cluster under that code)."""
    rows = texts[texts.ticker.isin(companies.ticker)].sort_values(["ticker", "known_by", "source"], kind="stable")
    rows = rows.drop_duplicates(["ticker", "known_by"], keep="last").reset_index(drop=True)
    sic4 = rows.sic4.astype("string")
    frame = pd.DataFrame({
        "ticker": rows.ticker,
        "known_by": rows.known_by,
        "cik": rows.cik.astype("Int64"),
        "sic4": sic4,
        "sic2": sic4.str[:2],
        "sic_division": [sic_division(code) if isinstance(code, str) else pd.NA for code in sic4],
        "sic_source": sic4.notna().map({True: "universe", False: pd.NA}),
        "gics_sector": rows.gics_sector,
        "gics_sub_industry": rows.gics_sub_industry,
    })
    frame = frame.astype({"cik": "Int64", **{column: "string" for column in CODE_COLUMNS if column not in ("cik", "known_by")}})
    newest = frame.drop_duplicates("ticker", keep="last")
    changed = frame.groupby("ticker")[["sic4", "gics_sub_industry"]].nunique(dropna=False).gt(1).any(axis=1)
    counts = {"sic_missing": int(newest.sic4.isna().sum()), "gics_missing": int(newest.gics_sub_industry.isna().sum()),
              "tickers_whose_codes_change": int(changed.sum())}
    return LoadedTable(frame, counts, {"tickers_whose_codes_change": sorted(changed.index[changed])})


def load_universe_prices(folder: str | Path) -> pd.DataFrame | None:
    """prices.csv|parquet as a daily price frame (`peerlens.sources.returns.PRICE_COLUMNS`, open/high/low
    <NA> and volume 0 where the file leaves them out); None when the universe has no prices file.

    Errors (UniverseError, naming file, rows and column): a missing or unknown column, a date that is not
    YYYY-MM-DD, an empty ticker, a value that is not a number, a (ticker, date) on two rows. Zero, negative
    and missing closes are not errors here: price cleaning drops and counts them.
    """
    path = universe_file(folder, PRICES, required=False)
    if path is None:
        return None
    frame = read_table(path, PRICE_REQUIRED, PRICE_OPTIONAL)
    if frame.empty:
        raise UniverseError(f"{path}: no rows (leave the file out if the universe has no prices)")
    _require_values(path, frame, ("date", "ticker"))
    prices = pd.DataFrame({"date": _parse_dates(path, frame, "date"), "ticker": _parse_tickers(path, frame)})
    for column in ("open", "high", "low", "close", "volume"):
        text = frame.get(column, pd.Series("", index=frame.index))
        values = pd.to_numeric(text.replace({"": None, "nan": None, "NaN": None}), errors="coerce")
        bad = frame.index[values.isna() & text.replace({"nan": "", "NaN": ""}).ne("")]
        if len(bad):
            _fail(path, bad, column, "not a number", text)
        prices[column] = values.fillna(0).astype("int64") if column == "volume" else values.astype("float64")
    repeated = _repeated_rows(prices, ["ticker", "date"])
    if len(repeated):
        _fail(path, repeated, "date", "the same (ticker, date) on more than one row", frame.date)
    return prices.loc[:, list(PRICE_COLUMNS)].sort_values(["ticker", "date"], kind="stable").reset_index(drop=True)


def universe_months_window(folder: str | Path) -> tuple[str, str]:
    """(first month, end) of the monthly partitions for the universe in `folder`, as YYYY-MM-DD.

    With prices: from the month after the first price (its first month-end return) to the first of
    the month after the last one. Without: from the month after the first text, with no end ("" means up
    to now): the clustering dates then run to today.
    """
    dates = _price_dates(folder)
    if dates is not None:
        first, last = dates.min(), dates.max()
        start = (first + pd.offsets.MonthBegin(1)).normalize()
        return start.strftime("%Y-%m-%d"), (last + pd.offsets.MonthBegin(1)).normalize().strftime("%Y-%m-%d")
    first_text = load_universe_companies(folder).frame.known_by.min()
    return (first_text + pd.offsets.MonthBegin(1)).normalize().strftime("%Y-%m-%d"), ""


def _price_dates(folder: str | Path) -> pd.Series | None:
    """The date column of the universe's prices file, parsed; None without prices. Only that column is read: the
    partitions need it whenever the definitions load, and a long prices file is mostly other columns. A file
    whose dates cannot be read this way is read whole, so that its error is the full reader's."""
    path = universe_file(folder, PRICES, required=False)
    if path is None:
        return None
    try:
        if path.suffix == ".parquet":
            frame = _as_text(pd.read_parquet(path, columns=["date"]))
        else:
            frame = pd.read_csv(path, usecols=["date"], dtype=str, keep_default_na=False, encoding="utf-8")
    except (ValueError, KeyError, OSError, pd.errors.ParserError):  # UnicodeDecodeError is a ValueError
        frame = pd.DataFrame()
    if "date" not in frame or frame.empty:
        return load_universe_prices(folder).date
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="row")
    frame["date"] = frame["date"].str.strip()
    _require_values(path, frame, ("date",))
    return _parse_dates(path, frame, "date")

