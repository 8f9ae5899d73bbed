"""Sparse probing: how much of an industry label a handful of a representation's features carry.

After Gurnee et al. (2023, "Finding Neurons in a Haystack"): for company features X (n, m) and labels y
(n,) (SIC division, GICS sector), within each training fold of a stratified k-fold split

    1. rank the m features by their one-way ANOVA F statistic for y          (sklearn f_classif)
    2. keep the k best, standardise them, fit a multinomial logistic regression (L2, C = 1)
    3. score accuracy on the held-out fold

so the ranking never sees the fold it is scored on. A representation whose label is carried by few
features (an SAE latent per industry, ideally) reaches high accuracy at small k; a dense one (the raw
residual) needs many. Reported per k: mean and standard deviation of the fold accuracies, and the
majority-class rate, the floor any probe must beat. Classes with fewer members than folds are left
out (and counted), since a stratified split cannot place them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

PROBE_COLUMNS = ["k", "accuracy", "accuracy_std", "majority_rate", "companies", "classes", "classes_left_out"]


def sparse_probe_accuracy(
    features: np.ndarray, labels: Sequence, ks: Sequence[int], folds: int = 5, seed: int = 0
) -> pd.DataFrame:
    """Cross-validated accuracy of k-sparse logistic probes of `labels` from `features`, one row per k.

    Args:
        features: (n, m) one row per company (e.g. pooled SAE latents, or the mean residual).
        labels: (n,) the label of each row; rows labelled None/NaN are left out.
        ks: feature counts to probe with; a k above m uses all m features.
        folds: stratified folds (shuffled with `seed`).

    Returns:
        DataFrame with PROBE_COLUMNS, sorted by k.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = pd.Series(list(labels), dtype=object)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features must be (n, m) with one row per label; got {features.shape} for {len(labels)} labels")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN/inf")
    if folds < 2 or not ks or min(ks) < 1:
        raise ValueError(f"need folds >= 2 and ks >= 1, got folds={folds}, ks={list(ks)}")
    counts = labels.dropna().value_counts()
    kept_classes = counts[counts >= folds].index
    rows = labels.isin(kept_classes).to_numpy()
    x, y = features[rows], labels[rows].astype(str).to_numpy()
    if len(kept_classes) < 2:
        raise ValueError(f"fewer than 2 classes have {folds} members or more: nothing to probe")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    results = []
    for k in sorted(set(ks)):
        probe = make_pipeline(
            SelectKBest(f_classif, k=min(k, x.shape[1])), StandardScaler(), LogisticRegression(max_iter=2000)
        )
        with warnings.catch_warnings():
            # Constant features (latents that never fire in a fold) give F = NaN: they rank last, as they should.
            warnings.simplefilter("ignore", (RuntimeWarning, UserWarning, ConvergenceWarning))
            scores = cross_val_score(probe, x, y, cv=splitter, scoring="accuracy")
        results.append({
            "k": int(min(k, x.shape[1])),
            "accuracy": float(scores.mean()),
            "accuracy_std": float(scores.std()),
            "majority_rate": float(pd.Series(y).value_counts(normalize=True).iloc[0]),
            "companies": int(len(y)),
            "classes": int(len(kept_classes)),
            "classes_left_out": int(len(counts) - len(kept_classes)),
        })
    return pd.DataFrame(results, columns=PROBE_COLUMNS).drop_duplicates("k").reset_index(drop=True)
