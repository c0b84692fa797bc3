"""The paper's scaling curve: accuracy against synthetic tokens as a mixture of exponentials,

    y(x) = a - sum_i b_i * r_i ** x      (0 < r_i < 1; the paper fits three terms, asymptote a)

fitted by variable projection: for fixed rates the model is linear in (a, b_1..b_n), solved by least
squares, and the rates are searched on a log grid refined around the best point. numpy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The paper's fit (x in millions of synthetic tokens, y in % accuracy), for reference in plots and docs.
PAPER_FIT = (64.5456, ((13.8352, 0.9989), (8.4705, 0.8961), (3.932, 0.0546)))


@dataclass(frozen=True)
class CurveFit:
    a: float
    terms: tuple[tuple[float, float], ...]  # (b_i, r_i), rates in the units of x given to `fit`
    rmse: float

    def __call__(self, x):
        x = np.asarray(x, dtype=float)
        return self.a - sum(b * np.power(r, x) for b, r in self.terms)


def _solve(x: np.ndarray, y: np.ndarray, ks: np.ndarray) -> tuple[np.ndarray, float]:
    cols = [np.ones_like(x)] + [-np.exp(-k * x) for k in ks]
    design = np.stack(cols, axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = design @ coef - y
    return coef, float(np.sqrt(np.mean(resid ** 2)))


def fit(x, y, n_terms: int = 1, *, grid: int = 60, rounds: int = 6) -> CurveFit:
    """Least-squares fit of `n_terms` exponential terms; needs at least 2 * n_terms + 1 points."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) < 2 * n_terms + 1:
        raise ValueError(f"{len(x)} points cannot determine {2 * n_terms + 1} parameters; use fewer terms.")
    scale = float(x.max()) or 1.0
    xs = x / scale
    # decay constants k (r = exp(-k) per unit of xs): from barely curved to nearly a step
    lo, hi = np.log(1e-2), np.log(1e3)
    ks = np.exp(np.linspace(lo, hi, n_terms + 2)[1:-1])
    best = _solve(xs, y, ks)[1]
    width = (hi - lo) / 2
    for _ in range(rounds):
        for _sweep in range(3):
            for i in range(n_terms):
                center = np.log(ks[i])
                for cand in np.linspace(max(lo, center - width), min(hi, center + width), grid):
                    trial = ks.copy()
                    trial[i] = np.exp(cand)
                    err = _solve(xs, y, trial)[1]
                    if err < best - 1e-15:
                        best, ks = err, trial
        width /= 4
    order = np.argsort(ks)  # slowest decay first, as the paper lists them
    ks = ks[order]
    coef, rmse = _solve(xs, y, ks)
    terms = tuple((float(b), float(np.exp(-k / scale))) for b, k in zip(coef[1:], ks))
    return CurveFit(a=float(coef[0]), terms=terms, rmse=rmse)


def terms_for(num_points: int) -> int:
    """As many terms (at most the paper's three) as leave the fit over-determined; 0: too few points."""
    return max(0, min(3, (num_points - 2) // 2))
