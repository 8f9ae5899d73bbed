"""Engle-Granger cointegration tests for many pairs at once, equal to ``statsmodels`` ``coint``.

``statsmodels.tsa.stattools.coint(y, x)`` costs about 15 ms per pair, almost all of it in the
ADF lag search (maxlag + 2 = 18 OLS model and result objects at T = 252). :func:`engle_granger` runs the same
two steps for n pairs with batched linear algebra and returns the same numbers:

1. Cointegrating regression, per pair i (OLS with intercept):

       y_t = intercept + hedge_ratio * x_t + e_t,      t = 0..T-1

2. ADF regression on the residual e, without constant or trend (``adfuller(e, regression="n")``):

       de_t = rho * e_{t-1} + sum_{k=1..p} phi_k * de_{t-k} + u_t,     de_t = e_t - e_{t-1}

   tstat = rho_hat / se(rho_hat), se from s^2 = SSR / (nobs - p - 1) and (X'X)^-1.

Lag order p: maxlag L defaults to min(ceil(12 (T/100)^(1/4)), T//2 - 1). With autolag, every
p in 0..L is fitted on the common sample t = L+1..T-1 (nobs0 = T-1-L rows), so the criteria are
comparable, and p is chosen by

    AIC_p = -2 llf_p + 2 (p+1),   BIC_p = -2 llf_p + log(nobs0) (p+1),
    llf_p = -nobs0/2 * (log(2 pi) + log(SSR_p / nobs0) + 1),

(smallest value, the smaller p on a tie) or by "t-stat" (the largest p whose last lag has
|t| >= 1.6448536269514722, else 0). The chosen p is then re-fitted on its maximal sample
t = p+1..T-1 (nobs = T-1-p rows) and that fit gives the test statistic, exactly as ``adfuller``.

The p-value is statsmodels' own ``mackinnonp(tstat, regression="c", N=2)`` (N = 2 series), and
the critical values ``mackinnoncrit(N=2, regression="c", nobs=T-1)``, as ``coint`` computes them.
If the cointegrating regression has R^2 >= 1 - 100 sqrt(eps) the legs are (almost) collinear and
``coint`` skips the ADF step: tstat = -inf, pvalue = 0. So does this module.

All nested lag regressions come from one Cholesky factor: for a design [X | y] with upper factor
R (R'R = [X | y]'[X | y], diag(R) > 0), z = R[:k, -1] and r = R[-1, -1], the fit on the first j columns of X has

    SSR_j = r^2 + sum_{i >= j} z_i^2,       t(last coefficient) = z_{j-1} / sqrt(SSR_j / (nobs - j)).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from statsmodels.tsa.adfvalues import mackinnoncrit, mackinnonp

AUTOLAG_METHODS = ("aic", "bic", "t-stat")
"""Lag-selection criteria, as ``adfuller``'s ``autolag`` (None: use maxlag lags, no search)."""

_COLLINEAR_RSQUARED = 1.0 - 100.0 * math.sqrt(np.finfo(np.float64).eps)
"""``coint`` runs the ADF step only when the cointegrating R^2 is below this."""

_TSTAT_STOP = 1.6448536269514722
"""``adfuller``'s "t-stat" rule keeps the largest lag whose t is at least the 95% normal quantile."""


class EngleGranger(NamedTuple):
    """Engle-Granger test of n pairs (y_i on x_i); every array has one entry per pair."""

    tstat: np.ndarray
    """(n,) ADF t-statistic of the cointegrating residual; -inf where the legs are collinear."""
    pvalue: np.ndarray
    """(n,) MacKinnon's asymptotic p-value, ``mackinnonp(tstat, "c", N=2)``."""
    lags: np.ndarray
    """(n,) int lagged differences in the final ADF regression; -1 where collinear (no ADF)."""
    nobs: np.ndarray
    """(n,) int rows of the final ADF regression, T - 1 - lags; 0 where collinear."""
    icbest: np.ndarray
    """(n,) the best criterion value of the lag search (AIC/BIC, or |t| for "t-stat"); NaN
    without a search or where collinear."""
    hedge_ratio: np.ndarray
    """(n,) slope of the cointegrating regression y = intercept + hedge_ratio * x + e."""
    intercept: np.ndarray
    """(n,) intercept of the cointegrating regression."""
    collinear: np.ndarray
    """(n,) bool, cointegrating R^2 >= 1 - 100 sqrt(eps): the ADF step was skipped."""
    maxlag: int
    """Largest lag order considered (the lag order used for every pair when autolag is None)."""
    critical_values: np.ndarray
    """(3,) 1%, 5%, 10% critical values of tstat, ``mackinnoncrit(N=2, "c", nobs=T-1)``."""


def default_maxlag(nobs: int) -> int:
    """``adfuller``'s default maxlag without trend terms: min(ceil(12 (nobs/100)^(1/4)), nobs//2 - 1)."""
    return min(int(np.ceil(12.0 * np.power(nobs / 100.0, 1 / 4.0))), nobs // 2 - 1)


def _checked_inputs(
    y: np.ndarray, x: np.ndarray, maxlag: int | None, autolag: str | None
) -> tuple[np.ndarray, np.ndarray, int, str | None]:
    arrays = []
    for name, values in (("y", y), ("x", x)):
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 2:
            raise ValueError(
                f"{name} must be 2-D (T dates, n pairs), got shape {array.shape}; "
                "reshape a single series with .reshape(-1, 1)"
            )
        if not np.isfinite(array).all():
            bad_columns = np.flatnonzero(~np.isfinite(array).all(axis=0))
            raise ValueError(
                f"{name} has NaN or infinite values in {bad_columns.size} columns "
                f"(first: {bad_columns[:5].tolist()}); the test needs complete series"
            )
        arrays.append(array)
    y, x = arrays
    if y.shape != x.shape:
        raise ValueError(f"y and x must have the same shape (T, n), got {y.shape} and {x.shape}")
    n_dates = y.shape[0]
    if n_dates < 3:
        raise ValueError(f"need at least 3 dates for the cointegrating regression, got T={n_dates}")

    if autolag is not None:
        if not isinstance(autolag, str) or autolag.lower() not in AUTOLAG_METHODS:
            raise ValueError(f"autolag must be one of {AUTOLAG_METHODS} or None, got {autolag!r}")
        autolag = autolag.lower()
    if maxlag is None:
        maxlag = default_maxlag(n_dates)
    else:
        if isinstance(maxlag, bool) or int(maxlag) != maxlag or maxlag < 0:
            raise ValueError(f"maxlag must be a non-negative integer or None, got {maxlag!r}")
        maxlag = int(maxlag)
        if maxlag > n_dates // 2 - 1:
            raise ValueError(f"maxlag must be <= T//2 - 1 = {n_dates // 2 - 1} (as adfuller), got {maxlag}")
    # The widest ADF regression has maxlag + 1 regressors on T - 1 - maxlag rows; with no
    # residual degree of freedom its SSR is 0 and the AIC and the t-statistic are meaningless.
    if n_dates < 2 * maxlag + 3:
        raise ValueError(
            f"T={n_dates} dates is too short for maxlag={maxlag}: the ADF regressions need "
            f"T >= 2 * maxlag + 3 = {2 * maxlag + 3}"
        )
    return y, x, maxlag, autolag


def _cointegrating_regression(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """OLS of y on [1, x] per column, in centred form.

    hedge_ratio = sum(xc yc) / sum(xc^2), intercept = mean(y) - hedge_ratio mean(x),
    e = yc - hedge_ratio xc, R^2 = 1 - sum(e^2) / sum(yc^2) (xc, yc: x and y minus their means).
    A constant x gets hedge_ratio 0, the minimum-norm solution statsmodels' pinv gives.

    Args:
        y, x: (T, n).

    Returns:
        hedge_ratio (n,), intercept (n,), residuals (n, T) (pairs first), collinear (n,) bool.
    """
    y_mean, x_mean = y.mean(axis=0), x.mean(axis=0)
    y_centred, x_centred = y - y_mean, x - x_mean
    x_square_sum = np.einsum("ti,ti->i", x_centred, x_centred)
    cross_sum = np.einsum("ti,ti->i", x_centred, y_centred)
    hedge_ratio = np.divide(cross_sum, x_square_sum, out=np.zeros_like(cross_sum), where=x_square_sum > 0)
    intercept = y_mean - hedge_ratio * x_mean
    residuals = (y_centred - hedge_ratio * x_centred).T
    with np.errstate(divide="ignore", invalid="ignore"):
        rsquared = 1.0 - np.einsum("it,it->i", residuals, residuals) / np.einsum("ti,ti->i", y_centred, y_centred)
    # A comparison with NaN (constant y: 0/0) is False, so coint treats it as collinear too.
    collinear = ~(rsquared < _COLLINEAR_RSQUARED)
    return hedge_ratio, intercept, np.ascontiguousarray(residuals), collinear


def _adf_design(levels: np.ndarray, first_row: int, n_lags: int, level_last: bool) -> np.ndarray:
    """Stacked ADF regression [regressors | response] on rows t = first_row+1 .. T-1.

    Args:
        levels: (m, T) residual series e.
        first_row: s >= n_lags; the response is de_t for t = s+1..T-1 (T-1-s rows).
        n_lags: p, lagged differences de_{t-1}..de_{t-p} among the regressors.
        level_last: column order [de_{t-1}..de_{t-p}, e_{t-1}] if True, else [e_{t-1}, de_{t-1}..].

    Returns:
        (m, p+2, T-1-s) array, one row per column of the design (rows are contiguous, which makes
        building it and its Gram fast); the last is the response de_t.
    """
    diffs = np.diff(levels, axis=1)  # diffs[:, j] = de_{j+1}
    n_rows = diffs.shape[1] - first_row
    lagged = [diffs[:, first_row - k : first_row - k + n_rows] for k in range(1, n_lags + 1)]
    level = levels[:, first_row : first_row + n_rows]
    columns = [*lagged, level] if level_last else [level, *lagged]
    return np.stack([*columns, diffs[:, first_row:]], axis=1)


def _upper_factor(design: np.ndarray) -> np.ndarray:
    """R with R'R = D'D and diag(R) >= 0, for each stacked design D.

    Args:
        design: (m, k, rows), the transposed designs D' from :func:`_adf_design`.

    Returns:
        (m, k, k) upper-triangular R.
    """
    gram = np.matmul(design, design.transpose(0, 2, 1))
    try:
        return np.linalg.cholesky(gram).transpose(0, 2, 1)
    except np.linalg.LinAlgError:
        # A response fitted exactly (an exact linear recursion in e) makes the Gram singular; the
        # QR factor still exists, and its zero diagonal turns into inf/NaN statistics for that pair
        # only, instead of failing the whole batch.
        upper = np.linalg.qr(design.transpose(0, 2, 1), mode="r")
        signs = np.where(np.diagonal(upper, axis1=1, axis2=2) < 0, -1.0, 1.0)
        return upper * signs[:, :, None]


def _search_lags(levels: np.ndarray, maxlag: int, autolag: str) -> tuple[np.ndarray, np.ndarray]:
    """Lag order per series by ``adfuller``'s search on the common sample (see module docstring).

    Args:
        levels: (m, T) residual series.

    Returns:
        lags (m,) int in 0..maxlag, icbest (m,) the chosen criterion value (|t| for "t-stat").
    """
    upper = _upper_factor(_adf_design(levels, maxlag, maxlag, level_last=False))
    n_rows = levels.shape[1] - 1 - maxlag
    projections = upper[:, : maxlag + 1, -1]  # z_j, j = 0..maxlag
    residual_norm_sq = upper[:, -1, -1] ** 2
    # SSR of the fit on columns 0..p: r^2 + sum_{j > p} z_j^2, for p = 0..maxlag.
    tail_sums = np.cumsum(projections[:, ::-1] ** 2, axis=1)[:, ::-1]
    ssr = residual_norm_sq[:, None] + np.concatenate([tail_sums[:, 1:], np.zeros((len(levels), 1))], axis=1)
    n_params = np.arange(1, maxlag + 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        if autolag == "t-stat":
            diagonal = np.diagonal(upper, axis1=1, axis2=2)[:, : maxlag + 1]
            last_tstat = np.abs(projections * np.sign(diagonal) / np.sqrt(ssr / (n_rows - n_params)))
            significant = last_tstat >= _TSTAT_STOP
            # adfuller walks down from maxlag and stops at the first significant lag, else lag 0.
            lags = np.where(significant.any(axis=1), maxlag - np.argmax(significant[:, ::-1], axis=1), 0)
            return lags, np.take_along_axis(last_tstat, lags[:, None], axis=1)[:, 0]
        log_likelihood = -n_rows / 2.0 * (np.log(2.0 * np.pi) + np.log(ssr / n_rows) + 1.0)
    penalty = 2.0 if autolag == "aic" else np.log(n_rows)
    criterion = -2.0 * log_likelihood + penalty * n_params
    lags = np.argmin(criterion, axis=1)  # the first minimum: the smaller lag wins a tie, as in adfuller
    return lags, np.take_along_axis(criterion, lags[:, None], axis=1)[:, 0]


def _adf_tstat(levels: np.ndarray, n_lags: int) -> np.ndarray:
    """t-statistic of rho in the ADF regression with n_lags lags on its maximal sample.

    With the level last in [de lags, e_{t-1} | de_t], t = z_p sign(R_pp) / sqrt(r^2 / (nobs - p - 1))
    (see the module docstring), nobs = T - 1 - n_lags.

    Args:
        levels: (m, T) residual series.

    Returns:
        (m,) t-statistics.
    """
    upper = _upper_factor(_adf_design(levels, n_lags, n_lags, level_last=True))
    n_rows = levels.shape[1] - 1 - n_lags
    level_diagonal = upper[:, n_lags, n_lags]
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.sqrt(upper[:, -1, -1] ** 2 / (n_rows - n_lags - 1))
        return upper[:, n_lags, -1] * np.sign(level_diagonal) / scale


def engle_granger(
    y: np.ndarray,
    x: np.ndarray,
    maxlag: int | None = None,
    autolag: str | None = "aic",
    chunk_size: int = 2048,
) -> EngleGranger:
    """Engle-Granger test of every column pair (y[:, i], x[:, i]), equal to ``coint(y_i, x_i)``.

    Same defaults as ``statsmodels.tsa.stattools.coint`` (trend "c", method "aeg"); the formulas
    are in the module docstring. Pairs are processed chunk_size at a time to bound memory (about
    chunk_size * T * (maxlag + 2) * 8 bytes for the ADF designs); within a chunk everything is
    batched, and the only per-pair Python call is ``mackinnonp``, which takes scalars only.

    Args:
        y: (T, n) dependent legs (e.g. log prices of a), complete (no NaN).
        x: (T, n) regressor legs (log prices of b).
        maxlag: largest ADF lag order; None for adfuller's default 12 (T/100)^(1/4) capped at T//2 - 1.
        autolag: "aic" (default), "bic", "t-stat", or None to use maxlag lags for every pair.
        chunk_size: pairs per batch.

    Returns:
        :class:`EngleGranger` with one entry per pair.
    """
    y, x, maxlag, autolag = _checked_inputs(y, x, maxlag, autolag)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    n_dates, n_pairs = y.shape
    hedge_ratio, intercept, residuals, collinear = _cointegrating_regression(y, x)

    tstat = np.full(n_pairs, -np.inf)
    lags = np.full(n_pairs, -1, dtype=np.int64)
    icbest = np.full(n_pairs, np.nan)
    tested = np.flatnonzero(~collinear)
    for start in range(0, tested.size, chunk_size):
        chunk = tested[start : start + chunk_size]
        levels = residuals[chunk]
        if autolag is None:
            chunk_lags = np.full(chunk.size, maxlag, dtype=np.int64)
        else:
            chunk_lags, icbest[chunk] = _search_lags(levels, maxlag, autolag)
        lags[chunk] = chunk_lags
        for n_lags in np.unique(chunk_lags):  # at most maxlag + 1 orders, each one batched
            members = chunk_lags == n_lags
            tstat[chunk[members]] = _adf_tstat(levels[members], int(n_lags))

    pvalue = np.fromiter((mackinnonp(stat, regression="c", N=2) for stat in tstat), np.float64, n_pairs)
    # coint passes nobs - 1 to mackinnoncrit "to match egranger in Stata".
    critical_values = np.asarray(mackinnoncrit(N=2, regression="c", nobs=n_dates - 1), dtype=np.float64)
    return EngleGranger(
        tstat=tstat,
        pvalue=pvalue,
        lags=lags,
        nobs=np.where(collinear, 0, n_dates - 1 - lags),
        icbest=icbest,
        hedge_ratio=hedge_ratio,
        intercept=intercept,
        collinear=collinear,
        maxlag=maxlag,
        critical_values=critical_values,
    )
