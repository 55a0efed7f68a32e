"""Paired statistics: is a difference measured on the same questions (or validation rows) beyond noise?

    paired_difference(base_correct, tuned_correct)   # accuracy delta in points, 95 % bootstrap CI, McNemar p
    paired_loss_difference(before, after)            # token-weighted loss delta over the same rows, 95 % CI
    welch_difference(seeds_a, seeds_b)                # difference of means over repeats (seeds), Welch's t-test
    unpaired_loss_difference(test_rows, val_rows)     # token-weighted loss delta of two sets of rows, 95 % CI

Torch-free: report and compare use it on a copied run directory.

Run as: tunelab compare runs/gsm8k-2ep runs/gsm8k-3ep
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 10_000


def paired_difference(base: list[bool], tuned: list[bool], seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """Accuracy delta (tuned - base, points) on the same questions, with a 95 % paired bootstrap CI
    and McNemar's exact two-sided p-value over the discordant pairs."""
    n = len(base)
    assert n == len(tuned) and n > 0
    diffs = np.array(tuned, dtype=np.int8) - np.array(base, dtype=np.int8)  # (n,) in {-1, 0, 1}
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    lo, hi = np.percentile(diffs[idx].mean(axis=1), [2.5, 97.5])
    gained, lost = int((diffs == 1).sum()), int((diffs == -1).sum())
    return {"n": n, "delta_pts": round(100 * float(diffs.mean()), 3),
            "ci95_pts": [round(100 * float(lo), 3), round(100 * float(hi), 3)],
            "gained": gained, "lost": lost, "mcnemar_p": _mcnemar_exact(gained, lost)}


def paired_loss_difference(before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]],
                           seed: int = 0, resamples: int = RESAMPLES, level: float = 0.95) -> dict | None:
    """Token-weighted mean loss of `after` minus `before` over the rows both measured (id -> (mean loss, tokens)),
    with a paired bootstrap interval over rows (95 %, or `level`: a Bonferroni-corrected one), and the two
    token-weighted means over those rows. None when they share no row."""
    ids = [i for i in before if i in after]
    if not ids:
        return None
    w = np.array([before[i][1] for i in ids], dtype=np.float64)  # (n,) supervised tokens per row
    d = np.array([after[i][0] - before[i][0] for i in ids])  # (n,) per-row loss change
    idx = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))
    boot = (d[idx] * w[idx]).sum(1) / np.maximum(w[idx].sum(1), 1e-12)
    lo, hi = np.percentile(boot, [50 * (1 - level), 100 - 50 * (1 - level)])
    means = [float(np.dot([rows[i][0] for i in ids], w) / w.sum()) for rows in (before, after)]
    return {"n": len(ids), "delta": round(float((d * w).sum() / w.sum()), 6),
            "ci95": [round(float(lo), 6), round(float(hi), 6)], "means": [round(m, 6) for m in means]}


def unpaired_difference(a: list[bool], b: list[bool], seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """Accuracy of group `a` minus group `b` (different questions), in points, with a 95 % bootstrap interval
    that resamples each group on its own."""
    x, y = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boot = (x[rng.integers(0, len(x), (resamples, len(x)))].mean(1)
            - y[rng.integers(0, len(y), (resamples, len(y)))].mean(1))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"n_a": len(x), "n_b": len(y), "delta_pts": round(100 * float(x.mean() - y.mean()), 3),
            "ci95_pts": [round(100 * float(lo), 3), round(100 * float(hi), 3)]}


def unpaired_loss_difference(a: list[tuple[float, int]], b: list[tuple[float, int]], seed: int = 0,
                             resamples: int = RESAMPLES) -> dict:
    """Token-weighted mean loss of rows `a` minus rows `b` (different rows; each a (mean loss, supervised tokens)
    pair), with a 95 % bootstrap interval that resamples each group's rows on its own."""
    la, wa = np.array(a, dtype=np.float64).T  # (n_a,) losses, (n_a,) token weights
    lb, wb = np.array(b, dtype=np.float64).T
    rng = np.random.default_rng(seed)

    def boot(loss: np.ndarray, w: np.ndarray) -> np.ndarray:  # (resamples,) weighted means of resampled rows
        idx = rng.integers(0, len(loss), (resamples, len(loss)))
        return (loss[idx] * w[idx]).sum(1) / np.maximum(w[idx].sum(1), 1e-12)

    lo, hi = np.percentile(boot(la, wa) - boot(lb, wb), [2.5, 97.5])
    mean_a, mean_b = float((la * wa).sum() / wa.sum()), float((lb * wb).sum() / wb.sum())
    return {"n_a": len(la), "n_b": len(lb), "loss_a": round(mean_a, 6), "loss_b": round(mean_b, 6),
            "delta": round(mean_a - mean_b, 6), "ci95": [round(float(lo), 6), round(float(hi), 6)]}


def welch_difference(a: list[float], b: list[float]) -> dict | None:
    """Mean of `b` minus mean of `a` (independent samples: one figure per seed of two recipes), with Welch's
    t-test: two-sided p and the 95 % CI of the difference (Welch–Satterthwaite degrees of freedom). None when
    neither sample varies (no noise to judge against) or either has fewer than 2 values."""
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return None
    import warnings
    from scipy.stats import ttest_ind
    with warnings.catch_warnings():  # one sample without spread: scipy warns of precision, the test is still Welch's
        warnings.simplefilter("ignore", RuntimeWarning)
        test = ttest_ind(b, a, equal_var=False)
        ci = test.confidence_interval(0.95)
    return {"n_a": len(a), "n_b": len(b), "delta": round(float(np.mean(b) - np.mean(a)), 6),
            "ci95": [round(float(ci.low), 6), round(float(ci.high), 6)], "p": float(test.pvalue)}


def _mcnemar_exact(b: int, c: int) -> float:
    """Exact binomial McNemar test: two-sided p for b vs c discordant pairs (scipy's binomial test)."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest
    return float(binomtest(b, b + c, 0.5).pvalue)
