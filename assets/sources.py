"""Sources: company descriptions, industry codes, daily prices and monthly returns."""

from contextlib import contextmanager

import pandas as pd
import requests
from dagster import (
    AssetIn,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    AssetCheckSpec,
    Output,
    RetryRequested,
    asset,
    asset_check,
)
from pydantic import Field

from assets.metadata import frame_version, markdown_table, rule_metadata, table_preview
from assets.partitions import MONTHS, TEXT_DATES, partitions_value
from peerlens.sources.edgar import EdgarError, EdgarRefused
from peerlens.layout import write_parquet_atomically
from peerlens.sources.returns import PriceCleaning, clean_daily_prices, infer_last_complete_month, month_end_log_returns
from peerlens.sources.texts import LOADED_COLUMNS, append_texts, text_days, texts_from_records, texts_known_on
from peerlens.sources.tickers import normalize_ticker
from resources import ArtifactStorage, CompanyDataResource, EdgarResource, YFinanceResource
from sae_core.text import is_blank

EDGAR_TEXTS = "edgar_texts.parquet"
"""The 10-K texts fetched from EDGAR so far (a text history); each refresh appends to it."""


LIVE_RETRIES, LIVE_RETRY_SECONDS = 3, 60
"""A live source that stays unreachable after its client's own retries gets the step retried this often."""


@contextmanager
def retried_when_unreachable(source: str):
    """Turn a network failure of a live source into Dagster's step retry (RetryRequested), up to LIVE_RETRIES
    times LIVE_RETRY_SECONDS apart; bad input, and a request EDGAR refuses (403, 404), still fail at once."""
    try:
        yield
    except EdgarRefused:
        raise
    except (EdgarError, requests.RequestException, ConnectionError, TimeoutError) as error:
        unreachable = ConnectionError(f"{source} could not be reached: {error}")
        raise RetryRequested(max_retries=LIVE_RETRIES, seconds_to_wait=LIVE_RETRY_SECONDS) from unreachable


class CompanyDescriptionsConfig(Config):
    tickers: list[str] = Field(default=[], description="Restrict the universe to these tickers (empty: all).")
    require_prices: bool = Field(default=True, description="Drop companies without daily prices, and report them.")
    refresh_from_edgar: list[str] = Field(
        default=[],
        description="Tickers whose latest 10-K 'Item 1. Business' is fetched from EDGAR (set by the new-filings sensor).",
    )


@asset(group_name="sources", kinds={"pandas", "parquet"})
def company_descriptions(
    context: AssetExecutionContext,
    config: CompanyDescriptionsConfig,
    company_data: CompanyDataResource,
    edgar: EdgarResource,
    artifacts: ArtifactStorage,
) -> Output[pd.DataFrame]:
    """The text history: every text each company ever had (`peerlens.sources.texts.TEXT_COLUMNS`), one row per text.

    text_id, company_id (CIK, else ticker), cik, ticker (at the time), name, description, source,
    known_by (the day the text became public). The sample vintage's texts plus every 10-K 'Item 1.
    Business' fetched from EDGAR so far, each a new row dated by its filing: a newer text never
    replaces an older one, and what is scored on a period uses only texts known before it starts.
    Each known_by day becomes a partition of TEXT_DATES (if it is not one yet): what is computed per text
    is computed per day of texts.
    """
    loaded = company_data.company_texts()
    frame, counts = loaded.frame, dict(loaded.rule_counts)
    history_path = artifacts.folder("company_descriptions") / EDGAR_TEXTS
    fetched = pd.read_parquet(history_path) if history_path.exists() else frame.iloc[:0]
    if config.refresh_from_edgar:
        with retried_when_unreachable("EDGAR"):
            new = _fetch_item1(frame, [normalize_ticker(t) for t in config.refresh_from_edgar], edgar, context)
        update = append_texts(fetched, new)
        fetched = update.history
        write_parquet_atomically(fetched, history_path)
        counts["edgar_texts_added"] = len(update.added)
    frame = append_texts(frame, fetched).history
    counts["texts_from_edgar"] = len(fetched)

    if config.tickers:
        wanted = {normalize_ticker(t) for t in config.tickers}
        unknown = sorted(wanted - set(frame.ticker))
        if unknown:
            raise ValueError(f"company_descriptions config: tickers {unknown} have no description in the source")
        frame = frame[frame.ticker.isin(wanted)]
    excluded: list[str] = []
    with_prices = company_data.price_tickers()
    # A source without any prices (your universe, before you have them) is clustered, not evaluated.
    if config.require_prices and with_prices:
        excluded = sorted(set(frame.ticker) - with_prices)
        frame = frame[frame.ticker.isin(with_prices)]
    counts["excluded_without_prices"] = len(excluded)
    frame = frame.sort_values(["ticker", "known_by", "source"]).reset_index(drop=True)
    if frame.empty:
        raise ValueError("company_descriptions: no company is left after the universe filters")
    days = text_days(frame)
    new_days = [day for day in days if not context.instance.has_dynamic_partition(TEXT_DATES.name, day)]
    context.instance.add_dynamic_partitions(TEXT_DATES.name, new_days)
    return Output(
        frame,
        data_version=frame_version(frame),
        metadata={
            "texts": len(frame),
            "companies": int(frame.company_id.nunique()),
            "source": company_data.describe(),
            "has_prices": bool(with_prices),
            "known_by_range": f"{frame.known_by.min().date()} .. {frame.known_by.max().date()}",
            "text_dates": len(days),
            "text_dates_added": ", ".join(new_days) or "none",
            **rule_metadata(counts),
            "excluded_without_prices_tickers": ", ".join(excluded) or "none",
            "mean_description_chars": float(frame.description.str.len().mean()),
            "preview": table_preview(
                frame[["ticker", "company_id", "name", "source", "known_by"]].assign(
                    description=frame.description.str.slice(0, 120)
                )
            ),
        },
    )


@asset(
    group_name="sources",
    kinds={"pandas", "parquet"},
    partitions_def=TEXT_DATES,
    # One day per run: each partition's data version must hash its own rows (one version per run).
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=1),
    check_specs=[AssetCheckSpec("every_text_of_the_day_is_known_on_it", asset="daily_texts", blocking=True)],
)
def daily_texts(context: AssetExecutionContext, company_descriptions: pd.DataFrame):
    """One partition per day D on which texts became known: company_descriptions' rows with known_by on D.

    Cheap, and what shields the model from the history: each partition's data version hashes its own
    rows, so when a new filing adds a day, the days before it keep their versions and their activations
    stay current; only the new day's are captured.
    """
    texts = texts_known_on(company_descriptions, context.partition_key)
    if texts.empty:
        raise ValueError(
            f"daily_texts partition {context.partition_key}: company_descriptions holds no text known on that "
            "day (a partition left from another universe: leave it unmaterialized, or delete it in the UI)"
        )
    preview = table_preview(texts[["ticker", "source", "known_by"]])
    yield Output(texts, data_version=frame_version(texts), metadata={"texts": len(texts), "preview": preview})
    off_day = texts[texts.known_by.dt.strftime("%Y-%m-%d") != context.partition_key]
    yield AssetCheckResult(
        check_name="every_text_of_the_day_is_known_on_it",
        passed=off_day.empty and texts.text_id.is_unique,
        metadata={"texts": len(texts), "texts_of_another_day": len(off_day), "unique_text_ids": bool(texts.text_id.is_unique)},
    )


def _fetch_item1(frame: pd.DataFrame, tickers: list[str], edgar: EdgarResource, context) -> pd.DataFrame:
    """Latest 10-K Item 1 text for `tickers` (which must be in `frame`, for their CIKs), as a text history."""
    client = edgar.client()
    rows = []
    known = frame.sort_values("known_by").drop_duplicates("ticker", keep="last").set_index("ticker")
    for ticker in tickers:
        if ticker not in known.index or pd.isna(known.at[ticker, "cik"]):
            raise ValueError(f"refresh_from_edgar: ticker {ticker!r} has no CIK in the universe")
        cik = int(known.at[ticker, "cik"])
        filing = client.latest_10k(cik)
        if filing is None:
            context.log.warning(f"{ticker} (CIK {cik}) has no 10-K on EDGAR; its earlier texts stay its latest")
            continue
        rows.append(
            {
                "ticker": ticker,
                "cik": cik,
                "name": known.at[ticker, "name"],
                "description": client.item1_business(filing),
                "source": f"edgar:{filing.accession_number}",
                "known_by": filing.filing_date,
            }
        )
        context.log.info(f"{ticker}: Item 1 of 10-K {filing.accession_number} ({filing.filing_date})")
    return texts_from_records(pd.DataFrame(rows, columns=list(LOADED_COLUMNS)), "EDGAR refresh")


@asset_check(asset=company_descriptions, blocking=True)
def descriptions_are_unique_and_non_empty(company_descriptions: pd.DataFrame) -> AssetCheckResult:
    """Every text appears once, is dated, and has something visible in it (`sae_core.text`): a missing or
    blank one would become a feature vector that means nothing."""
    texts = company_descriptions
    empty = texts.text_id[~texts.description.map(lambda text: isinstance(text, str) and not is_blank(text))].tolist()
    duplicated = texts.text_id[texts.text_id.duplicated()].tolist()
    undated = texts.text_id[texts.known_by.isna()].tolist()
    return AssetCheckResult(
        passed=not empty and not duplicated and not undated,
        metadata={
            "empty": ", ".join(empty) or "none",
            "duplicated": ", ".join(duplicated) or "none",
            "undated": ", ".join(undated) or "none",
        },
    )


@asset(group_name="sources", kinds={"pandas", "parquet"})
def index_membership(company_data: CompanyDataResource) -> Output[pd.DataFrame]:
    """Index membership spells (ticker, start_date, end_date; NaT end: still a member): who was in the index on
    a day, so a clustering dated D holds only the companies an investor could have named on D. Empty when the
    source has no history (the 2024 vintage): then every company with a text and prices is in the universe."""
    frame = company_data.index_membership()
    return Output(
        frame,
        data_version=frame_version(frame),
        metadata={
            "spells": len(frame),
            "tickers": int(frame.ticker.nunique()),
            "point_in_time": bool(len(frame)),
        },
    )


@asset_check(asset=index_membership, blocking=True)
def membership_spells_do_not_overlap(index_membership: pd.DataFrame) -> AssetCheckResult:
    """A ticker's spells are disjoint (each ends before the next starts): otherwise "member on D" is ambiguous."""
    spells = index_membership.sort_values(["ticker", "start_date"])
    previous_end = spells.groupby("ticker").end_date.shift()
    overlapping = spells[(previous_end.isna() & spells.ticker.duplicated()) | (previous_end > spells.start_date)]
    return AssetCheckResult(
        passed=overlapping.empty,
        metadata={"overlapping": ", ".join(sorted(set(overlapping.ticker))) or "none"},
    )


@asset(group_name="sources", kinds={"pandas", "parquet"})
def industry_codes(company_descriptions: pd.DataFrame, company_data: CompanyDataResource) -> Output[pd.DataFrame]:
    """SIC (4-digit, 2-digit, division) and GICS (sector, sub-industry) per ticker, joined on CIK where possible:
    one row per (ticker, known_by). Your universe's codes are dated by the texts that carry them, and a clustering
    uses those known before its date; the sample's are undated snapshots (known_by NaT), used on every date.

    When the labels were known is in the metadata: a label known only after a scored period is not point in time.
    """
    companies = company_descriptions.sort_values("known_by").drop_duplicates("ticker", keep="last")
    loaded = company_data.industry_codes(companies[["ticker", "cik"]])
    frame = loaded.frame
    return Output(
        frame,
        data_version=frame_version(frame),
        metadata={
            "label_vintages": company_data.label_vintages(),
            **rule_metadata(loaded.rule_counts),
            **{f"{rule}_tickers": ", ".join(loaded.affected_tickers.get(rule, [])) or "none"
               for rule in ("ticker_cik_conflicts", "tickers_whose_codes_change") if rule in loaded.rule_counts},
            "distinct_sic4": int(frame.sic4.nunique()),
            "distinct_gics_sub_industry": int(frame.gics_sub_industry.nunique()),
            "preview": table_preview(frame),
        },
    )


@asset_check(asset=industry_codes, blocking=True, additional_ins={"company_descriptions": AssetIn("company_descriptions")})
def every_company_has_an_industry_row(
    company_descriptions: pd.DataFrame, industry_codes: pd.DataFrame
) -> AssetCheckResult:
    """An industry row for every ticker (codes may be missing, the row may not), one per (ticker, known_by)."""
    missing = sorted(set(company_descriptions.ticker) - set(industry_codes.ticker))
    repeated = industry_codes[industry_codes.duplicated(["ticker", "known_by"], keep=False)].ticker.unique()
    return AssetCheckResult(
        passed=not missing and not len(repeated),
        metadata={
            "missing": ", ".join(missing) or "none",
            "repeated_ticker_and_known_by": ", ".join(sorted(repeated)) or "none",
            "sic4_missing": int(industry_codes.sic4.isna().sum()),
            "gics_missing": int(industry_codes.gics_sub_industry.isna().sum()),
        },
    )


class DailyPricesConfig(Config):
    source: str = Field(
        default="company_data",
        description="'company_data': the company_data resource's prices (the sample, or your universe's file), "
        "offline; 'yfinance': live.",
    )
    max_close_outside_range: float = PriceCleaning.max_close_outside_range
    jump_log_return: float = PriceCleaning.jump_log_return


@asset(group_name="sources", kinds={"pandas", "parquet"})
def daily_prices(
    config: DailyPricesConfig, company_data: CompanyDataResource, yfinance: YFinanceResource
) -> Output[pd.DataFrame]:
    """Cleaned daily prices (date, ticker, open, high, low, close, volume, jump), with every cleaning rule counted.

    No rows when the source has no prices (your own universe may not): then the clusters are made, and the
    evaluations that need returns are left out of a graph run (`assets.graph_run.RETURN_EVALUATIONS`)."""
    if config.source == "company_data":
        loaded = company_data.daily_prices()
    elif config.source == "yfinance":
        tickers = sorted(company_data.company_texts().frame.ticker.unique())
        with retried_when_unreachable("yfinance"):
            loaded = yfinance.daily_prices(tickers)
            if loaded.rule_counts["tickers_without_data"] == len(tickers):
                raise ConnectionError(f"yfinance returned no prices for any of {len(tickers)} tickers")
    else:
        raise ValueError(f"daily_prices source {config.source!r} is not 'company_data' or 'yfinance'")
    cleaned = clean_daily_prices(loaded.frame, PriceCleaning(config.max_close_outside_range, config.jump_log_return))
    prices = cleaned.prices
    jumps = prices[prices.jump][["ticker", "date"]]
    return Output(
        prices,
        data_version=frame_version(prices),
        metadata={
            **rule_metadata({**loaded.rule_counts, **cleaned.rule_counts}),
            **{f"{rule}_tickers": ", ".join(tickers) or "none" for rule, tickers in loaded.affected_tickers.items()},
            "tickers": int(prices.ticker.nunique()),
            "first_date": str(prices.date.min().date()) if len(prices) else "none",
            "last_date": str(prices.date.max().date()) if len(prices) else "none",
            "jump_days": markdown_table(jumps.head(25), floatfmt="g"),
        },
    )


@asset_check(asset=daily_prices, blocking=True)
def prices_are_positive_and_dated(daily_prices: pd.DataFrame) -> AssetCheckResult:
    """Closes are positive, dates present, and no (ticker, date) repeats."""
    bad_close = int((~(daily_prices.close > 0)).sum())
    no_date = int(daily_prices.date.isna().sum())
    repeats = int(daily_prices.duplicated(["ticker", "date"]).sum())
    return AssetCheckResult(
        passed=bad_close == 0 and no_date == 0 and repeats == 0,
        metadata={"non_positive_close": bad_close, "missing_date": no_date, "repeated_rows": repeats},
    )


@asset(
    group_name="sources",
    partitions_def=MONTHS,
    backfill_policy=BackfillPolicy.single_run(),
    kinds={"pandas", "parquet"},
    check_specs=[AssetCheckSpec("returns_are_finite_or_flagged", asset="monthly_returns")],
)
def monthly_returns(context: AssetExecutionContext, daily_prices: pd.DataFrame):
    """Log returns of month-end closes, one partition per month: month, ticker, close_month_end, log_return, jump_in_month.

    log_return = ln(C_m / C_{m-1}); NaN where an unadjusted spin-off drop falls inside the month.
    A run over several months (single-run backfill) yields {partition_key: frame}.
    """
    months = context.partition_keys
    returns = month_end_log_returns(daily_prices, last_complete_month=infer_last_complete_month(daily_prices.date))
    returns = returns[returns.month.isin([m[:7] for m in months])]
    parts = {key: returns[returns.month == key[:7]].reset_index(drop=True) for key in months}
    empty = [key for key, part in parts.items() if part.empty]
    if empty:
        raise ValueError(f"monthly_returns: no prices cover months {empty[:5]} (the price source ends earlier)")
    yield Output(
        partitions_value(parts),
        metadata={
            "months": len(parts),
            "rows": len(returns),
            "nan_returns_from_jumps": int(returns.jump_in_month.sum()),
            # A month without any close leaves the next return NaN rather than a two-month return.
            "nan_returns_from_missing_months": int((returns.log_return.isna() & ~returns.jump_in_month).sum()),
            "tickers": int(returns.ticker.nunique()),
        },
    )
    # A missing return must come from a flagged jump or a gap, never an inf; |r| >= 1.5 (a 78% fall
    # or a 350% rise in a month) on an S&P 500 name is a data error until shown otherwise.
    values = returns.log_return
    infinite = int(values.isin([float("inf"), float("-inf")]).sum())
    extreme = int((values.abs() >= 1.5).sum())
    yield AssetCheckResult(
        check_name="returns_are_finite_or_flagged",
        passed=infinite == 0 and extreme == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={"infinite": infinite, "extreme_moves": extreme, "nan": int(values.isna().sum())},
    )
