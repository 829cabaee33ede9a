"""Stitching checked exactly with analytic predictors (the window loop never sees a model)."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from pedq_deploy.errors import InputError
from pedq_deploy.runtime.sliding_window import gaussian_importance, sliding_window_inference, window_starts


@pytest.mark.parametrize(
    "shape,patch,overlap,batch",
    [
        ((1, 40, 37, 23), (16, 16, 16), 0.5, 1),
        ((2, 40, 37, 23), (16, 16, 8), 0.25, 3),
        ((1, 10, 12, 6), (16, 16, 16), 0.5, 2),  # smaller than a patch: padded
        ((1, 32, 32, 32), (32, 32, 32), 0.5, 1),  # exactly one window
    ],
)
def test_pointwise_predictors_are_reproduced_exactly(shape, patch, overlap, batch):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for fn, expect in ((lambda b: b + 1, x + 1), (lambda b: 2 * b, 2 * x)):
        y = sliding_window_inference(x, patch, fn, overlap=overlap, batch_size=batch)
        assert y.shape == x.shape and y.dtype == np.float32
        assert_allclose(y, expect, rtol=1e-5, atol=1e-5)


def test_channel_changing_predictor_and_constant_weights():
    x = np.random.default_rng(1).normal(size=(1, 30, 20, 20)).astype(np.float32)
    y = sliding_window_inference(x, (12, 12, 12), lambda b: np.concatenate([b, -b, b * b], axis=1), importance="constant")
    assert_allclose(y, np.concatenate([x, -x, x * x]), rtol=1e-5, atol=1e-6)


def test_windows_cover_the_volume_and_every_window_is_called():
    assert window_starts(100, 32, 0.5)[-1] == 68 and window_starts(100, 32, 0.5)[0] == 0
    assert window_starts(20, 32, 0.5) == [0]
    calls = []

    def count(b):
        calls.append(b.shape[0])
        return b

    sliding_window_inference(np.zeros((1, 64, 64, 32), np.float32), (32, 32, 32), count, overlap=0.5, batch_size=2)
    assert sum(calls) == 3 * 3 * 1 and max(calls) == 2


def test_region_of_interest_skips_empty_windows_and_keeps_its_voxels_exact():
    """A window-dependent predictor (adds the window's own mean): roi voxels must get exactly what
    the full run gives, and fewer windows run."""
    x = np.random.default_rng(2).normal(size=(1, 64, 64, 32)).astype(np.float32)
    roi = np.zeros(x.shape[1:], bool)
    roi[5:20, 8:30, 4:12] = True
    calls = []

    def fn(b):
        calls.append(b.shape[0])
        return b + b.mean(axis=(1, 2, 3, 4), keepdims=True)

    full = sliding_window_inference(x, (32, 32, 16), fn, overlap=0.5)
    n_full = sum(calls)
    calls.clear()
    part = sliding_window_inference(x, (32, 32, 16), fn, overlap=0.5, roi=roi)
    assert sum(calls) < n_full
    assert_allclose(part[0][roi], full[0][roi], rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(part)) and part[0, 60, 60, 30] == 0.0  # far corner: no window ran there
    with pytest.raises(InputError, match="region of interest"):
        sliding_window_inference(x, (32, 32, 16), fn, roi=np.zeros((3, 3, 3), bool))
    with pytest.raises(InputError, match="empty"):
        sliding_window_inference(x, (32, 32, 16), fn, roi=np.zeros(x.shape[1:], bool))


def test_gaussian_importance():
    g = gaussian_importance((16, 16, 16))
    assert g.max() == 1.0 and g.min() > 0
    assert g[8, 8, 8] > g[0, 8, 8]


def test_bad_arguments_and_bad_predictor():
    x = np.zeros((1, 8, 8, 8), np.float32)
    with pytest.raises(InputError):
        sliding_window_inference(x[0], (4, 4, 4), lambda b: b)
    with pytest.raises(InputError):
        sliding_window_inference(x, (4, 4, 4), lambda b: b, overlap=1.0)
    with pytest.raises(InputError, match="predictor returned"):
        sliding_window_inference(x, (4, 4, 4), lambda b: b[:, :, :2])
