"""QC: the data-consistency map, the misfit in noise units, and the B0-direction check."""

import numpy as np
import pytest
from conftest import ball

from pedq_deploy.physics import check_direction, forward_field
from pedq_deploy.postprocess import QC_THRESHOLDS, consistency
from pedq_deploy.postprocess.qc import b0_direction_check

SHAPE, VOX = (64, 64, 64), (1.0, 1.0, 1.0)


def _sources(seed=0, n=40):
    """Small paramagnetic and diamagnetic spheres spread through a ball of 20 mm in a 64 mm box."""
    rng = np.random.default_rng(seed)
    chi = np.zeros(SHAPE, np.float32)
    for _ in range(n):
        c = rng.normal(0, 1, 3)
        c *= rng.uniform(0, 16) / np.linalg.norm(c)
        chi += np.float32(rng.choice([-1, 1]) * rng.uniform(0.02, 0.1)) * ball(SHAPE, VOX, c, rng.uniform(1.5, 4.0), supersample=2)
    return chi


def _rotated(b, deg):
    axis = np.cross(b, [1.0, 0.0, 0.0])
    axis /= np.linalg.norm(axis)
    t = np.deg2rad(deg)
    return b * np.cos(t) + np.cross(axis, b) * np.sin(t) + axis * (axis @ b) * (1 - np.cos(t))


def test_true_chi_explains_its_field_down_to_the_noise():
    """chi's own field plus Gaussian noise of known sigma: the map is the noise alone, and the misfit
    in noise units is the median of |N(0,1)| over its mean (0.674 / 0.798 = 0.845), whatever the
    reference (mean) chi is given with."""
    b = check_direction((0.2, 0.1, 1.0))
    chi = _sources()
    mask = ball(SHAPE, VOX, (0, 0, 0), 26.0) > 0.5
    field = forward_field(chi, VOX, b)
    k, mag, sigma = 2.0, np.ones(SHAPE, np.float32), 1e-4  # rad per ppm; field noise = sigma / (mag k)
    noisy = field + np.random.default_rng(1).normal(0, sigma / k, SHAPE).astype(np.float32)
    ref = np.where(mask, chi - chi[mask].mean() + 0.3, 0.0)  # an arbitrary reference: fitted back
    qc_map, summary = consistency(ref, noisy, mask, VOX, b, k, mag, noise_sigma=sigma)
    assert summary["misfit_noise_ratio"] == pytest.approx(0.845, abs=0.06)
    assert summary["misfit_fraction_above_3"] < 0.03 and summary["flags"] == []  # P(|N(0,1)| > 3 x 0.798) = 1.7%
    assert qc_map[~mask].max() == 0 and qc_map[mask].mean() == pytest.approx(sigma * np.sqrt(2 / np.pi), rel=0.15)
    # chi that does not explain the field (half of it missing) is flagged
    _, bad = consistency(np.where(mask, 0.5 * chi, 0.0), noisy, mask, VOX, b, k, mag, noise_sigma=sigma)
    assert bad["misfit_noise_ratio"] > QC_THRESHOLDS["misfit_noise_ratio"] and any("does not explain" in f for f in bad["flags"])


def test_the_field_points_to_its_own_b0_and_a_wrong_one_is_flagged():
    """A dipole field has no energy on its kernel's zero cone: the cone with least energy is B0's."""
    b = check_direction((0.3, -0.2, 1.0))
    field = forward_field(_sources(3), VOX, b)
    mask = ball(SHAPE, VOX, (0, 0, 0), 28.0) > 0.5
    right = b0_direction_check(field, mask, VOX, b)
    assert right["best_angle_deg"] < 6 and right["cone_energy_ratio"] < 1.2
    wrong = b0_direction_check(field, mask, VOX, _rotated(b, 25.0))
    assert abs(wrong["best_angle_deg"] - 25) < 6 and wrong["cone_energy_ratio"] > QC_THRESHOLDS["b0_cone_energy_ratio"]
    _, summary = consistency(
        np.zeros(SHAPE, np.float32), field, mask, VOX, _rotated(b, 25.0), 1.0, np.ones(SHAPE, np.float32), noise_sigma=1.0
    )
    assert any("B0 direction" in f for f in summary["flags"])


def test_echo_files_in_the_wrong_order_are_flagged():
    """Echoes 2 and 4 swapped (mislabelled files): the phase is no longer linear in the stated echo
    times wherever the field is not tiny, and chi cannot explain the combined field."""
    from pedq_deploy.phantom import make_subject
    from pedq_deploy.runtime.pipeline import PipelineConfig, run_case

    tes = (5e-3, 10e-3, 15e-3, 20e-3)
    s = make_subject(seed=6, age="infant", shape=(96, 96, 40), voxel_size=(1.6, 1.6, 3.0), tilt_deg=10.0, echo_time=tes, snr=200.0)
    out = {}
    for name, order in (("right", [0, 1, 2, 3]), ("swapped", [0, 3, 2, 1])):
        r = run_case(
            s.magnitude[..., order],
            s.phase[..., order],
            s.affine,
            s.voxel_size,
            PipelineConfig(echo_time=tes, field_strength=3.0, inversion="tkd"),
            mask=s.brain_mask,
        )
        out[name] = r.info["qc"]
    assert out["right"]["single_echo_fraction"] < 0.02 and not any("linear in TE" in f or "explain" in f for f in out["right"]["flags"])
    assert out["swapped"]["single_echo_fraction"] > QC_THRESHOLDS["single_echo_fraction"]
    assert any("linear in TE" in f for f in out["swapped"]["flags"]) and any("does not explain" in f for f in out["swapped"]["flags"])
