import numpy as np
import pytest
from conftest import ball, grid_mm
from numpy.testing import assert_allclose

from pedq_deploy.errors import InputError
from pedq_deploy.phantom import tilt_affine
from pedq_deploy.physics import (
    b0_direction_from_affine,
    dipole_kernel,
    dipole_kernel_rfft,
    forward_field,
    phase_to_ppm,
    ppm_to_phase,
)


def test_dipole_kernel_range_and_dc():
    d = dipole_kernel((16, 18, 20), (1.0, 1.0, 2.0), (0.2, 0.3, 0.9))
    assert d[0, 0, 0] == 0
    assert d.min() >= -2 / 3 - 1e-6 and d.max() <= 1 / 3 + 1e-6
    # rfft layout equals the matching half of the full kernel below Nyquist (at Nyquist +k and
    # -k alias, and with a tilted B0 the kernel differs between them)
    half = dipole_kernel_rfft((16, 18, 20), (1.0, 1.0, 2.0), (0.2, 0.3, 0.9))
    assert half.shape == (16, 18, 11)
    assert_allclose(half[:, :, :10], d[:, :, :10], atol=1e-7)


def test_dipole_kernel_along_z_matches_formula():
    shape, vs = (8, 8, 8), (1.0, 1.0, 1.0)
    d = dipole_kernel(shape, vs, (0, 0, 1))
    k = np.fft.fftfreq(8)
    kx, ky, kz = np.meshgrid(k, k, k, indexing="ij")
    with np.errstate(invalid="ignore"):
        expect = 1 / 3 - kz**2 / (kx**2 + ky**2 + kz**2)
    expect[0, 0, 0] = 0
    assert_allclose(d, expect, atol=1e-6)


def test_b0_direction_from_affine():
    aff = np.diag([0.78, 0.78, 2.0, 1.0])
    assert_allclose(b0_direction_from_affine(aff), [0, 0, 1], atol=1e-12)
    tilted = tilt_affine((10, 10, 10), (0.78, 0.78, 2.0), 30.0, 0.0)  # rotation about world x
    b = b0_direction_from_affine(tilted)
    assert_allclose(np.linalg.norm(b), 1.0)
    assert_allclose(abs(b[2]), np.cos(np.deg2rad(30)), atol=1e-9)
    assert_allclose(abs(b[1]), np.sin(np.deg2rad(30)), atol=1e-9)
    with pytest.raises(InputError):
        b0_direction_from_affine(np.zeros((4, 4)))
    with pytest.raises(InputError):
        b0_direction_from_affine(np.full((4, 4), np.nan))


def test_units_round_trip_and_known_value():
    # 1 ppm at 3 T, TE 4.92 ms: 2 pi * 42.577478 * 3 * 4.92e-3 rad
    assert_allclose(ppm_to_phase(np.array([1.0]), 4.92e-3, 3.0), [2 * np.pi * 42.577478 * 3 * 4.92e-3], rtol=1e-6)
    x = np.linspace(-3, 3, 7).astype(np.float32)
    assert_allclose(phase_to_ppm(ppm_to_phase(x, 0.02, 1.5), 0.02, 1.5), x, rtol=1e-5)
    with pytest.raises(InputError):
        phase_to_ppm(x, 0.0, 3.0)
    with pytest.raises(InputError):
        phase_to_ppm(x, 0.01, -3.0)


@pytest.mark.parametrize("kernel", ["kspace", "image"])
def test_sphere_field_matches_analytic_for_tilted_b0_and_anisotropic_voxels(kernel):
    """Uniformly magnetised sphere: outside, dchi a^3/(3 r^3) (3 cos^2 theta - 1); inside, 0."""
    shape, vs = (96, 96, 64), (1.0, 1.0, 1.5)
    a, dchi = 9.0, 1.0
    b = np.array([0.3, -0.2, 0.93])
    b /= np.linalg.norm(b)
    chi = ball(shape, vs, (0, 0, 0), a) * dchi
    field = forward_field(chi, vs, b, pad_factor=2.0, kernel=kernel)
    x, y, z = grid_mm(shape, vs)
    r = np.sqrt(x**2 + y**2 + z**2)
    cos = (x * b[0] + y * b[1] + z * b[2]) / np.maximum(r, 1e-9)
    analytic = dchi * a**3 / (3 * np.maximum(r, 1e-9) ** 3) * (3 * cos**2 - 1)
    shell = np.broadcast_to((r > 1.4 * a) & (r < 2.5 * a), shape)
    err = np.linalg.norm((field - analytic)[shell]) / np.linalg.norm(analytic[shell])
    assert err < 0.03, err
    inside = np.broadcast_to(r < 0.6 * a, shape)
    peak = np.abs(analytic[shell]).max()
    if kernel == "kspace":
        # inside: zero (Lorentz-corrected), up to the Gibbs ripple of a voxelised edge
        assert np.abs(field[inside]).max() < 0.1 * peak
    else:
        # point dipoles on an anisotropic lattice add a constant self term inside a uniform
        # region (harmonic, so harmless for background sources); the inside must be uniform
        assert field[inside].std() < 0.01 * peak


def test_forward_field_rejects_bad_input():
    with pytest.raises(InputError):
        forward_field(np.zeros((4, 4)), (1, 1, 1))
    with pytest.raises(InputError):
        forward_field(np.zeros((4, 4, 4)), (1, 0, 1))
    with pytest.raises(InputError):
        forward_field(np.zeros((4, 4, 4)), (1, 1, 1), (0, 0, 0))
