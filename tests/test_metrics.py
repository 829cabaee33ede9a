import numpy as np
import pytest
import scipy.ndimage as ndi
from numpy.testing import assert_allclose

from pedq_deploy import metrics as M
from pedq_deploy.errors import InputError


def test_nrmse_by_hand_and_missing_voxels_count_as_zero():
    t = np.zeros((2, 2, 2))
    t[0, 0, :] = [3.0, 4.0]
    m = t != 0
    r = t.copy()
    r[0, 0, 0] = 0.0  # one voxel dropped: error 3 over norm 5
    assert_allclose(M.nrmse(r, t, m), 3 / 5)
    assert_allclose(M.coverage(r, m), 0.5)
    r[0, 0, 0] = np.nan  # non-finite is dropped too
    assert_allclose(M.nrmse(r, t, m), 3 / 5)
    assert_allclose(M.nrmse(np.zeros_like(t), t, m), 1.0)


def test_dice_by_hand():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros_like(a)
    a[:2] = True  # 32 voxels
    b[1:3] = True  # 32 voxels, 16 shared
    assert_allclose(M.dice(a, b), 0.5)
    assert M.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_similarity_of_identical_and_distorted_maps():
    rng = np.random.default_rng(0)
    t = ndi.gaussian_filter(rng.normal(size=(24, 24, 24)), 2) * 0.1
    m = np.ones(t.shape, bool)
    assert_allclose([M.ssim(t, t, m), M.xsim(t, t, m)], [1.0, 1.0], atol=1e-9)
    assert M.hfen(t, t, m) == 0
    noisy = t + rng.normal(scale=0.05, size=t.shape)
    assert M.ssim(noisy, t, m) < 0.9 and M.hfen(noisy, t, m) > 0.1


def test_region_stats_by_hand():
    chi = np.zeros((3, 3, 3))
    lab = np.zeros((3, 3, 3), int)
    lab[0, 0, :2] = 12
    chi[0, 0, :2] = [0.1, 0.3]
    rows = {r["label"]: r for r in M.region_stats(chi, lab, voxel_volume_ml=0.002)}
    assert rows[12]["name"] == "Left-Putamen" and rows[12]["voxels"] == 2
    assert_allclose([rows[12]["mean_ppm"], rows[12]["std_ppm"], rows[12]["volume_ml"]], [0.2, 0.1, 0.004])
    assert rows[49]["voxels"] == 0 and np.isnan(rows[49]["mean_ppm"])


def test_edge_sharpness():
    lab = np.zeros((40, 40, 40), int)
    lab[12:28, 12:28, 12:28] = 13
    truth = (lab > 0) * 0.05
    assert_allclose(M.edge_sharpness(truth, truth, lab), 1.0, atol=1e-9)
    blurred = ndi.gaussian_filter(truth, 2.0)
    assert M.edge_sharpness(blurred, truth, lab) < 0.8
    noisy = truth + np.random.default_rng(1).normal(scale=0.005, size=truth.shape)
    assert_allclose(M.edge_sharpness(noisy, truth, lab), 1.0, atol=0.1)
    with pytest.raises(InputError):
        M.edge_sharpness(truth, truth, np.zeros_like(lab))


def test_shape_mismatch_raises():
    with pytest.raises(InputError):
        M.nrmse(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), np.ones((2, 2, 2)))


def test_surface_distance_of_concentric_spheres_is_the_radius_gap():
    from pedq_deploy.metrics import surface_distance

    g = np.stack(np.meshgrid(*[np.arange(60) - 30.0] * 3, indexing="ij"))
    r = np.sqrt((g**2).sum(0))
    d = surface_distance(r < 20, r < 16, voxel_size=(0.5, 0.5, 0.5))
    assert d["mean_mm"] == pytest.approx(2.0, abs=0.35)  # 4 voxels of 0.5 mm
    assert d["hd95_mm"] == pytest.approx(2.0, abs=0.5)
    same = surface_distance(r < 20, r < 20)
    assert same["mean_mm"] == 0.0 and same["hd95_mm"] == 0.0
    with pytest.raises(InputError):
        surface_distance(r < 0, r < 20)


def test_amplitude_slope_is_the_share_of_the_contrast_a_map_carries():
    from pedq_deploy.metrics import amplitude_slope

    rng = np.random.default_rng(0)
    truth = rng.standard_normal((12, 12, 12))
    mask = np.ones(truth.shape, bool)
    assert amplitude_slope(truth, truth, mask) == pytest.approx(1.0)
    assert amplitude_slope(0.25 * truth + 3.0, truth, mask) == pytest.approx(0.25)  # a quarter of the contrast, any offset
    noise = rng.standard_normal(truth.shape)
    assert abs(amplitude_slope(0.5 * truth + 0.1 * noise, truth, mask) - 0.5) < 0.02  # noise does not raise it


def test_eroded_coverage_ignores_the_edge_a_method_erodes():
    from pedq_deploy.metrics import coverage, eroded_coverage

    mask = np.zeros((30, 30, 20), bool)
    mask[5:25, 5:25, 4:16] = True
    recon = np.where(mask, 1.0, 0.0)
    recon[5, :, :] = 0.0  # one face missing, 1 voxel deep
    assert coverage(recon, mask) < 1.0
    assert eroded_coverage(recon, mask, (1.0, 1.0, 2.0), mm=2.0) == 1.0
    recon[:, :, 10] = 0.0  # a slice through the middle missing
    assert eroded_coverage(recon, mask, (1.0, 1.0, 2.0), mm=2.0) < 1.0
