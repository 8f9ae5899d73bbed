"""Speed and agreement of the batched Engle-Granger test against a statsmodels ``coint`` loop.

On the sample's last 252 trading days (log closes of every ticker complete over them), all pairs
(i < j by ticker name) are tested by :func:`peerlens.pairs.cointegration.engle_granger`. A loop of
``coint`` over all of them would take many minutes, so it runs on a random sample of pairs; its
time per pair is extrapolated to all pairs, and the two are compared on that sample.

    python benchmarks/coint_speed.py [--sample-pairs 300] [--seed 0]

The last line of the output is one JSON object (see ``main``).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
from statsmodels.tools.sm_exceptions import CollinearityWarning
from statsmodels.tsa.adfvalues import mackinnonp
from statsmodels.tsa.stattools import coint

from peerlens.pairs.cointegration import engle_granger
from peerlens.sources.returns import clean_daily_prices
from peerlens.sources.sample import default_sample_dir, load_daily_prices

FORMATION_DAYS = 252
TARGET_SPEEDUP = 50


def last_year_log_closes(n_days: int = FORMATION_DAYS) -> tuple[np.ndarray, list[str]]:
    """(n_days, n_tickers) log closes of the sample's last n_days dates, tickers complete there."""
    cleaned = clean_daily_prices(load_daily_prices(default_sample_dir())).prices
    closes = cleaned.pivot(index="date", columns="ticker", values="close").sort_index().iloc[-n_days:]
    closes = closes.loc[:, closes.notna().all()]
    return np.log(closes.to_numpy(dtype=np.float64)), list(closes.columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-pairs", type=int, default=300, help="pairs timed with the statsmodels loop")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair sample")
    args = parser.parse_args()

    log_closes, tickers = last_year_log_closes()
    first, second = np.triu_indices(len(tickers), k=1)
    print(f"{len(tickers)} tickers complete over the last {FORMATION_DAYS} days -> {first.size} pairs")

    start = time.perf_counter()
    batched = engle_granger(log_closes[:, first], log_closes[:, second])
    vectorised_seconds = time.perf_counter() - start
    print(f"engle_granger, all pairs: {vectorised_seconds:.2f} s")
    # mackinnonp takes one scalar per call, so it is the one per-pair loop left: time its share.
    start = time.perf_counter()
    for stat in batched.tstat:
        mackinnonp(stat, regression="c", N=2)
    mackinnonp_seconds = time.perf_counter() - start
    print(f"  of which about {mackinnonp_seconds:.2f} s is the scalar mackinnonp p-value call per pair")

    sample = np.random.default_rng(args.seed).choice(first.size, size=min(args.sample_pairs, first.size), replace=False)
    reference = np.empty((sample.size, 2))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CollinearityWarning)
        for row, k in enumerate(sample):
            result = coint(log_closes[:, first[k]], log_closes[:, second[k]])
            reference[row] = result[0], result[1]
    seconds_per_pair = (time.perf_counter() - start) / sample.size
    extrapolated = seconds_per_pair * first.size
    print(
        f"statsmodels coint loop: {seconds_per_pair * 1e3:.2f} ms per pair on {sample.size} sampled pairs; "
        f"extrapolated to all {first.size} pairs: {extrapolated:.0f} s"
    )

    speedup = extrapolated / vectorised_seconds
    report = {
        "pairs": int(first.size),
        "vectorised_seconds": round(vectorised_seconds, 3),
        "vectorised_seconds_in_mackinnonp": round(mackinnonp_seconds, 3),
        "statsmodels_seconds_per_pair": round(seconds_per_pair, 6),
        "statsmodels_seconds_all_pairs_extrapolated": round(extrapolated, 1),
        "statsmodels_timing": f"measured on {sample.size} random pairs, extrapolated per pair",
        "speedup_vs_statsmodels_loop": round(speedup, 1),
        "max_abs_diff_tstat": float(np.abs(batched.tstat[sample] - reference[:, 0]).max()),
        "max_abs_diff_pvalue": float(np.abs(batched.pvalue[sample] - reference[:, 1]).max()),
        "target_speedup": TARGET_SPEEDUP,
        "meets_target": bool(speedup >= TARGET_SPEEDUP),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
