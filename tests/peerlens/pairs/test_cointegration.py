"""Specification of the batched Engle-Granger test (peerlens.pairs.cointegration): it is statsmodels' coint."""

import warnings

import numpy as np
import pytest
from statsmodels.regression.linear_model import OLS
from statsmodels.tools.sm_exceptions import CollinearityWarning
from statsmodels.tools.tools import add_constant
from statsmodels.tsa.stattools import adfuller, coint

from peerlens.pairs.cointegration import EngleGranger, default_maxlag, engle_granger

TOLERANCE = 1e-6


def pair_panel(n_dates: int, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, n) legs: even columns cointegrated (y = 0.5 + 1.5 x + AR(1) noise, phi 0.8), odd
    columns independent random walks; x is a random walk in every column."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(size=(n_dates, n_pairs)), axis=0)
    noise = np.zeros((n_dates, n_pairs))
    for t in range(1, n_dates):
        noise[t] = 0.8 * noise[t - 1] + rng.normal(size=n_pairs)
    independent = np.cumsum(rng.normal(size=(n_dates, n_pairs)), axis=0)
    y = np.where(np.arange(n_pairs) % 2 == 0, 0.5 + 1.5 * x + noise, independent)
    return y, x


def statsmodels_reference(y: np.ndarray, x: np.ndarray, **options) -> dict[str, np.ndarray]:
    """coint per column, and the lag (and criterion) adfuller chose on coint's own residual."""
    tstat, pvalue, lags, icbest = [], [], [], []
    for i in range(y.shape[1]):
        result = coint(y[:, i], x[:, i], **options)
        residual = OLS(y[:, i], add_constant(x[:, i], prepend=False)).fit().resid
        adf = adfuller(
            residual,
            maxlag=options.get("maxlag"),
            regression="n",
            autolag=options.get("autolag", "aic"),
            result_object=True,
        )
        tstat.append(result[0])
        pvalue.append(result[1])
        lags.append(adf.lags)
        icbest.append(np.nan if adf.icbest is None else adf.icbest)
    return {
        "tstat": np.array(tstat),
        "pvalue": np.array(pvalue),
        "lags": np.array(lags),
        "icbest": np.array(icbest),
    }


@pytest.mark.parametrize(("n_dates", "seed"), [(252, 0), (252, 1), (252, 2), (500, 3), (500, 4)])
def test_matches_statsmodels_coint_with_its_defaults(n_dates, seed):
    y, x = pair_panel(n_dates, 50, seed)
    result = engle_granger(y, x)
    reference = statsmodels_reference(y, x)

    np.testing.assert_allclose(result.tstat, reference["tstat"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(result.pvalue, reference["pvalue"], rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(result.lags, reference["lags"])
    np.testing.assert_allclose(result.icbest, reference["icbest"], rtol=1e-9)
    # The panel must exercise the test: cointegrated columns reject, independent walks mostly not.
    assert (result.pvalue[::2] < 0.05).mean() > 0.9
    assert (result.pvalue[1::2] > 0.05).mean() > 0.7
    assert len(np.unique(result.lags)) > 2


@pytest.mark.parametrize(
    "options", [{"autolag": "bic"}, {"autolag": "t-stat"}, {"autolag": None}, {"maxlag": 3}, {"maxlag": 0}]
)
def test_matches_statsmodels_coint_with_other_lag_rules(options):
    y, x = pair_panel(252, 20, seed=5)
    result = engle_granger(y, x, **options)
    reference = statsmodels_reference(y, x, **options)

    np.testing.assert_allclose(result.tstat, reference["tstat"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(result.pvalue, reference["pvalue"], rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(result.lags, reference["lags"])
    np.testing.assert_allclose(result.icbest, reference["icbest"], rtol=1e-9)  # NaN == NaN without a search


def test_critical_values_and_cointegrating_regression_match_coint_and_ols():
    y, x = pair_panel(252, 4, seed=6)
    result = engle_granger(y, x)

    np.testing.assert_allclose(result.critical_values, coint(y[:, 0], x[:, 0])[2], rtol=0, atol=1e-12)
    for i in range(4):
        intercept, hedge_ratio = OLS(y[:, i], add_constant(x[:, i])).fit().params
        assert result.hedge_ratio[i] == pytest.approx(hedge_ratio, abs=1e-10)
        assert result.intercept[i] == pytest.approx(intercept, abs=1e-10)
    # The even (cointegrated) columns were built with hedge ratio 1.5 (AR noise of std ~1.7 on a
    # single year keeps the estimate within about 0.15 of it).
    assert np.abs(result.hedge_ratio[::2] - 1.5).max() < 0.25
    assert result.maxlag == default_maxlag(252) == 16
    np.testing.assert_array_equal(result.nobs, 252 - 1 - result.lags)


def test_result_has_one_entry_per_pair_and_chunking_does_not_change_it():
    y, x = pair_panel(252, 7, seed=7)
    whole = engle_granger(y, x)
    chunked = engle_granger(y, x, chunk_size=2)

    assert isinstance(whole, EngleGranger)
    for name in ("tstat", "pvalue", "lags", "nobs", "icbest", "hedge_ratio", "intercept", "collinear"):
        assert getattr(whole, name).shape == (7,)
        np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name), rtol=0, atol=1e-12)


def test_collinear_legs_get_minus_infinity_and_pvalue_zero_like_coint():
    y, x = pair_panel(252, 3, seed=8)
    y[:, 1] = 2.0 + 3.0 * x[:, 1]  # y is an exact linear function of x
    result = engle_granger(y, x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CollinearityWarning)
        reference = coint(y[:, 1], x[:, 1])
    assert reference[0] == -np.inf and reference[1] == 0.0
    assert result.tstat[1] == -np.inf and result.pvalue[1] == 0.0
    assert result.collinear.tolist() == [False, True, False]
    assert result.lags[1] == -1 and result.nobs[1] == 0
    # The other pairs are tested as usual.
    assert np.isfinite(result.tstat[[0, 2]]).all()
    assert result.tstat[0] == pytest.approx(coint(y[:, 0], x[:, 0])[0], abs=TOLERANCE)


def test_a_residual_with_an_exactly_fitted_adf_regression_does_not_spoil_the_batch():
    y, x = pair_panel(252, 3, seed=9)
    # Residual (-1)^t: its difference obeys de_t = -de_{t-1} exactly, so the ADF fit is perfect.
    y[:, 1] = 0.5 + 1.5 * x[:, 1] + np.where(np.arange(252) % 2 == 0, 1.0, -1.0)
    result = engle_granger(y, x)

    for i in (0, 2):
        assert result.tstat[i] == pytest.approx(coint(y[:, i], x[:, i])[0], abs=TOLERANCE)


def test_no_pairs_give_empty_results():
    result = engle_granger(np.zeros((50, 0)), np.zeros((50, 0)))
    assert result.tstat.shape == result.pvalue.shape == result.lags.shape == (0,)


@pytest.mark.parametrize(
    ("y", "x", "options", "message"),
    [
        (np.ones((50, 2)), np.ones((50, 3)), {}, "same shape"),
        (np.ones(50), np.ones(50), {}, "must be 2-D"),
        (np.full((50, 2), np.nan), np.ones((50, 2)), {}, "NaN"),
        (np.ones((50, 2)), np.r_[np.ones((49, 2)), [[np.inf, 1.0]]], {}, "NaN or infinite"),
        (np.ones((2, 2)), np.ones((2, 2)), {}, "at least 3 dates"),
        (np.ones((20, 2)), np.ones((20, 2)), {}, "too short"),
        (np.ones((50, 2)), np.ones((50, 2)), {"maxlag": 25}, "maxlag must be <="),
        (np.ones((50, 2)), np.ones((50, 2)), {"maxlag": -1}, "non-negative"),
        (np.ones((50, 2)), np.ones((50, 2)), {"autolag": "hqic"}, "autolag must be one of"),
        (np.ones((50, 2)), np.ones((50, 2)), {"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(y, x, options, message):
    with pytest.raises(ValueError, match=message):
        engle_granger(y, x, **options)
