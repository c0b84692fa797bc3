"""The scaling curve (eval/curve.py): the fit recovers known parameters, exactly and under noise."""

from __future__ import annotations

import numpy as np
import pytest

from ray_entigraph.eval.curve import CurveFit, fit, terms_for


def test_curve_fit_recovers_known_parameters():
    one = CurveFit(60.0, ((20.0, 0.9),), 0.0)
    x = np.array([0, 5, 10, 20, 40, 80, 160.0])
    got = fit(x, one(x), 1)
    assert got.a == pytest.approx(60.0, rel=1e-3) and got.terms[0][0] == pytest.approx(20.0, rel=1e-3)
    assert got.terms[0][1] == pytest.approx(0.9, rel=1e-4) and got.rmse < 1e-3
    # two of the paper's terms (x in millions of tokens), sampled densely enough to identify both rates
    two = CurveFit(64.5456, ((13.8352, 0.9989), (8.4705, 0.8961)), 0.0)
    x = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096.0])
    got = fit(x, two(x), 2)
    assert got.a == pytest.approx(64.5456, rel=1e-3)
    for (b, r), (b0, r0) in zip(got.terms, two.terms):
        assert b == pytest.approx(b0, rel=1e-2) and r == pytest.approx(r0, rel=1e-3)
    # noisy points: the fit stays close to the truth
    rng = np.random.default_rng(0)
    x = np.linspace(0, 160, 12)
    noisy = fit(x, one(x) + rng.normal(0, 0.2, x.shape), 1)
    assert abs(noisy.a - 60.0) < 1.0 and abs(noisy.terms[0][1] - 0.9) < 0.02
    with pytest.raises(ValueError, match="cannot determine"):
        fit([0, 1], [1, 2], 1)
    assert [terms_for(n) for n in (2, 3, 4, 5, 8, 20)] == [0, 0, 1, 1, 3, 3]
