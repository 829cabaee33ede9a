import numpy as np
import pytest
from conftest import grid_mm
from numpy.testing import assert_allclose

from pedq_deploy.errors import InputError
from pedq_deploy.metrics import dice
from pedq_deploy.preprocess import (
    UNWRAP_METHODS,
    classic_mask,
    close_mask,
    default_radii,
    detect_and_scale_phase,
    laplacian_unwrap,
    lsq_unwrap,
    quality_unwrap,
    unwrap_phase,
    vsharp,
)
from pedq_deploy.preprocess.vsharp import sphere_kernel


def wrap(p):
    return np.angle(np.exp(1j * p)).astype(np.float32)


def smooth_phase(shape, vs, amplitude, width_mm):
    x, y, z = grid_mm(shape, vs)
    return (amplitude * np.exp(-(x**2 + y**2 + z**2) / (2 * width_mm**2))).astype(np.float32)


@pytest.mark.parametrize("vs", [(1.0, 1.0, 1.0), (0.78, 0.78, 2.0)])
def test_laplacian_unwrap_recovers_smooth_phase(vs):
    shape = (96, 96, 64)
    x, y, z = grid_mm(shape, vs)
    sxy, sz = (10.0, 10.0) if vs[2] == 1.0 else (10.0, 20.0)
    # ~2 wraps, at most ~0.75 rad per voxel, ~0 at the (periodic) box edge
    truth = (12.0 * np.exp(-(x**2 + y**2) / (2 * sxy**2) - z**2 / (2 * sz**2))).astype(np.float32)
    u = laplacian_unwrap(wrap(truth), vs)
    err = (u - u.mean()) - (truth - truth.mean())  # exact up to a constant on a periodic box
    assert np.abs(err).max() < 0.1 * 2 * np.pi


@pytest.mark.parametrize("vs", [(1.0, 1.0, 1.0), (0.78, 0.78, 2.0)])
def test_lsq_unwrap_is_exact_where_neighbours_differ_by_under_pi(vs):
    """A bump of 40 rad: neighbours differ by up to 2.4 rad (a long echo next to air, or a vein).
    The wrapped differences are the true ones there, so least squares recovers the phase exactly up
    to a constant (measured: 1e-5 rad). Schofield & Zhu's sine of the differences shrinks them and
    errs by rad (measured 8.6-11.9 rad); on a gentle phase (0.7 rad per voxel) the two agree."""
    shape = (96, 96, 64)
    x, y, z = grid_mm(shape, vs)
    sxy, sz = (10.0, 10.0) if vs[2] == 1.0 else (10.0, 20.0)
    bump = np.exp(-(x**2 + y**2) / (2 * sxy**2) - z**2 / (2 * sz**2))
    for amplitude, lap_error in ((40.0, 5.0), (12.0, 0.1)):
        truth = (amplitude * bump).astype(np.float32)
        step = max(np.abs(np.diff(truth, axis=a)).max() for a in range(3))  # the largest neighbour difference
        assert step < np.pi and (step > 2.0) == (amplitude == 40.0)
        errors = {}
        for f in (lsq_unwrap, laplacian_unwrap):
            u = f(wrap(truth), vs)
            errors[f.__name__] = np.abs((u - u.mean()) - (truth - truth.mean())).max()
        assert errors["lsq_unwrap"] < 1e-3
        if amplitude == 40.0:
            assert errors["laplacian_unwrap"] > lap_error
        else:
            assert errors["laplacian_unwrap"] < 2 * np.pi * 0.1


def test_unwrap_phase_dispatches_every_method_the_runtime_offers():
    from pedq_deploy.config import UNWRAPPERS

    assert tuple(UNWRAPPERS) == UNWRAP_METHODS  # the settings offer what the kernels do
    truth = smooth_phase((24, 24, 16), (1, 1, 1), 12.0, 4.0)
    np.testing.assert_array_equal(unwrap_phase(wrap(truth), (1, 1, 1), "lsq"), lsq_unwrap(wrap(truth), (1, 1, 1)))
    with pytest.raises(InputError, match="lsq"):
        unwrap_phase(wrap(truth), (1, 1, 1), "other")


def test_quality_unwrap_is_exact_up_to_a_2pi_multiple():
    shape, vs = (48, 40, 24), (1.0, 1.0, 2.0)
    x, y, z = grid_mm(shape, vs)
    # a steep linear ramp (not periodic: Laplacian unwrapping cannot do it) plus a bump
    truth = np.broadcast_to(0.9 * x + 0.4 * z, shape) + smooth_phase(shape, vs, 10.0, 8.0)
    u = quality_unwrap(wrap(truth))
    k = (u - truth) / (2 * np.pi)
    assert_allclose(k, np.round(k), atol=1e-3)
    assert np.ptp(np.round(k)) == 0  # one global multiple


def test_quality_unwrap_leaves_outside_of_mask_untouched():
    shape = (32, 32, 16)
    truth = smooth_phase(shape, (1, 1, 1), 12.0, 6.0)
    w = wrap(truth)
    mask = np.zeros(shape, bool)
    mask[4:28, 4:28, 2:14] = True
    u = quality_unwrap(w, mask=mask)
    assert_allclose(u[~mask], w[~mask])
    k = (u - truth)[mask] / (2 * np.pi)
    assert np.ptp(np.round(k)) == 0


def test_unwrap_rejects_bad_input():
    with pytest.raises(InputError):
        laplacian_unwrap(np.zeros((4, 4)))
    with pytest.raises(InputError):
        laplacian_unwrap(np.full((4, 4, 4), np.nan))
    with pytest.raises(InputError):
        lsq_unwrap(np.full((4, 4, 4), np.inf))
    with pytest.raises(InputError):
        lsq_unwrap(np.zeros((4, 4, 4)), (1.0, 0.0, 1.0))
    with pytest.raises(InputError):
        quality_unwrap(np.zeros((4, 4, 4)), mask=np.ones((3, 4, 4)))


def test_phase_formats():
    rad = np.array([[[-3.0, 0.0, 3.1]]], np.float32)
    p, note = detect_and_scale_phase(rad)
    assert_allclose(p, rad) and "radians" in note
    p, note = detect_and_scale_phase(np.array([[[-4096, 0, 4095]]], np.float32))
    assert_allclose(p, [[[-np.pi, 0, 4095 * np.pi / 4096]]], rtol=1e-6)
    assert "4096" in note
    p, note = detect_and_scale_phase(np.array([[[0, 2048, 4095]]], np.float32))
    assert_allclose(p, [[[-np.pi, 0, 2047 * np.pi / 2048]]], rtol=1e-6)
    with pytest.raises(InputError, match="no known format"):
        detect_and_scale_phase(np.array([[[-10.5, 0, 20.2]]], np.float32))
    with pytest.raises(InputError):
        detect_and_scale_phase(np.array([[[np.nan, 0, 1]]], np.float32))


def test_default_radii_respect_thick_voxels():
    r = default_radii((0.78, 0.78, 2.0))
    assert r[0] == 12.0 and r == sorted(r, reverse=True)
    assert r[-1] >= 2 * 2.0 - 1e-9  # a "sphere" thinner than two slices holds no z neighbour
    assert default_radii((1.0, 1.0, 1.0))[-1] == 2.0


def _axis_moments(k, vs):
    idx = [np.where(np.arange(n) <= n // 2, np.arange(n), np.arange(n) - n) * v for n, v in zip(k.shape, vs)]
    return np.array([float((k * (i.reshape([-1 if a == j else 1 for j in range(3)]) ** 2)).sum()) for a, i in enumerate(idx)])


@pytest.mark.parametrize("vs", [(1.0, 1.0, 1.0), (0.78, 0.78, 2.0)])
def test_sphere_kernel_moments_are_nearly_isotropic(vs):
    """The mean value property needs equal second moments along the axes, also for thick slices.

    A ball of whole voxels misses this badly on 0.78x0.78x2 mm grids; partial-volume weights
    bring it close.
    """
    shape = (64, 64, 32)
    k = sphere_kernel(shape, 4.0, vs)
    assert_allclose(k.sum(), 1.0, rtol=1e-5)
    m = _axis_moments(k, vs)
    spread = np.ptp(m) / m.mean()
    assert spread < 0.08
    whole = _axis_moments(sphere_kernel(shape, 4.0, vs, supersample=1), vs)
    if vs[2] != vs[0]:
        assert spread < 0.5 * np.ptp(whole) / whole.mean()


@pytest.mark.parametrize("vs", [(1.0, 1.0, 1.0), (0.78, 0.78, 2.0)])
def test_vsharp_removes_outside_sources_and_keeps_inside_ones(vs):
    shape = tuple(int(round(n / v)) for n, v in zip((128, 128, 128), vs))
    x, y, z = grid_mm(shape, vs)
    mask = np.broadcast_to(x**2 + y**2 + z**2 < 40**2, shape)
    # background: analytic field of a 9.4 ppm air sphere (radius 10 mm) 12 mm outside the mask
    cx, cy, cz = 0.0, 0.6 * 62, -0.8 * 62
    rx, ry, rz = x - cx, y - cy, z - cz
    r2 = rx**2 + ry**2 + rz**2
    background = np.broadcast_to(9.4 * 10**3 / 3 * (3 * rz**2 / r2 - 1) / r2**1.5, shape).astype(np.float32)
    # local: the analytic outside field of a small source sphere inside the brain
    sx, sy, sz = x - 6, y + 4, z - 2
    s2 = sx**2 + sy**2 + sz**2
    local = np.where(s2 > 4.0**2, 0.1 * 4.0**3 / 3 * (3 * sz**2 / np.maximum(s2, 1e-9) - 1) / np.maximum(s2, 1e-9) ** 1.5, 0.0)
    local = np.broadcast_to(local, shape).astype(np.float32)

    lf_bg, eroded = vsharp(background, mask, vs)
    assert eroded.sum() > 0.5 * mask.sum()
    # background: a 1.5 ppm field, removed to well under 1 % of its range
    assert np.sqrt((lf_bg[eroded] ** 2).mean()) < 0.003 * np.ptp(background[mask])
    lf, _ = vsharp(background + local, mask, vs)
    near = eroded & (s2 < 12.0**2)
    err = np.linalg.norm((lf - local)[near]) / np.linalg.norm(local[near])
    assert err < 0.35, err


def test_vsharp_rejects_bad_input():
    f = np.zeros((16, 16, 16), np.float32)
    with pytest.raises(InputError, match="empty"):
        vsharp(f, np.zeros_like(f, bool), (1, 1, 1))
    with pytest.raises(InputError):
        vsharp(f, np.ones((15, 16, 16), bool), (1, 1, 1))
    tiny = np.zeros_like(f, bool)
    tiny[6:9, 6:9, 6:9] = True
    with pytest.raises(InputError, match="vanishes"):
        vsharp(f, tiny, (1, 1, 1), radii=(3.0,))
    with pytest.raises(InputError):
        vsharp(f, tiny, (1, 1, 1), threshold=1.5)


def _ball_with_notch(vs):
    x, y, z = grid_mm((48, 48, 24), vs)
    ball = np.sqrt(x**2 + y**2 + z**2) < 14.0
    notched = ball & ~((np.abs(x) < 1.6) & (np.abs(z) < 2.5) & (y > 8.0))  # 3 mm wide, 6 mm deep, at the surface
    return ball, notched


def test_close_mask_fills_a_surface_notch_narrower_than_the_ball_and_removes_nothing():
    vs = (0.8, 0.8, 2.0)
    ball, notched = _ball_with_notch(vs)
    closed = close_mask(notched, 4.0, vs)
    assert not (notched & ~closed).any()  # extensive: nothing removed
    assert (closed & ~ball).sum() == 0  # a convex brain gains nothing beyond itself
    notch = ball & ~notched
    assert (closed & notch).sum() >= 0.8 * notch.sum()  # the notch is filled (its mouth's outer layer may stay open)
    assert np.array_equal(close_mask(ball, 4.0, vs), ball)  # a convex mask is unchanged
    assert np.array_equal(close_mask(notched, 0.0, vs), notched)
    # a ball narrower than the notch leaves it open
    assert (close_mask(notched, 1.0, vs) & notch).sum() <= 0.2 * notch.sum()


def test_close_mask_widens_vsharps_eroded_brain_by_the_notch():
    """The reason it exists: V-SHARP's erosion grows each notch by its smallest sphere."""
    vs = (0.8, 0.8, 2.0)
    ball, notched = _ball_with_notch(vs)
    field = np.zeros(ball.shape, np.float32)
    _, eroded_notched = vsharp(field, notched, vs, radii=[4.0])
    _, eroded_closed = vsharp(field, close_mask(notched, 4.0, vs), vs, radii=[4.0])
    _, eroded_ball = vsharp(field, ball, vs, radii=[4.0])
    assert eroded_closed.sum() > eroded_notched.sum()
    assert eroded_closed.sum() >= 0.95 * eroded_ball.sum()


def test_close_mask_does_not_wrap_around_the_grid_edge():
    vs = (1.0, 1.0, 1.0)
    m = np.zeros((20, 20, 20), bool)
    m[:, 5:15, 0:3] = True  # touches two opposite faces along x and the z = 0 face
    m[:, 5:15, 17:20] = True  # and, across the periodic boundary, the z = 19 face
    closed = close_mask(m, 3.0, vs)
    assert not closed[:, :, 8:12].any()  # the two slabs are 14 voxels apart inside the grid: not joined


def test_close_mask_rejects_bad_input():
    with pytest.raises(InputError, match="3D"):
        close_mask(np.ones((4, 4), bool), 2.0, (1, 1, 1))
    for bad in (-1.0, float("nan"), True, "2"):
        with pytest.raises(InputError, match="closing radius"):
            close_mask(np.ones((4, 4, 4), bool), bad, (1, 1, 1))
    with pytest.raises(InputError, match="voxel size"):
        close_mask(np.ones((4, 4, 4), bool), 2.0, (1, 0, 1))


def test_classic_mask_on_small_phantom(small_subject):
    notes = []
    m = classic_mask(small_subject.magnitude, small_subject.voxel_size, notes=notes)
    assert dice(m, small_subject.brain_mask) > 0.8 and notes == []
    with pytest.raises(InputError, match="all zero"):
        classic_mask(np.zeros((8, 8, 8), np.float32), (1, 1, 1))


def test_classic_mask_never_refuses_a_head_and_says_when_it_is_doubtful(small_subject, monkeypatch):
    """The classic masker is the fallback: where no threshold finds a brain it takes the head's
    interior, and says in one sentence that the mask is doubtful."""
    import pedq_deploy.preprocess.masking as masking

    monkeypatch.setattr(masking, "_threshold_mask", lambda norm, thr, erode, v: np.zeros(norm.shape, bool))
    notes = []
    m = classic_mask(small_subject.magnitude, small_subject.voxel_size, notes=notes)
    head = small_subject.magnitude > 0.1 * np.percentile(small_subject.magnitude, 99)
    assert m.any() and m.sum() < head.sum()
    assert dice(m, small_subject.brain_mask) > 0.5  # the head's interior is mostly brain
    assert len(notes) == 1 and "doubtful" in notes[0] and "head's interior" in notes[0]
    monkeypatch.undo()
    # a head of one uniform intensity (no contrast to threshold): a mask all the same, noted as doubtful
    ball = (np.linalg.norm(np.indices((40, 40, 40)) - 19.5, axis=0) < 15).astype(np.float32)
    notes = []
    m = classic_mask(ball, (2.0, 2.0, 2.0), notes=notes)
    assert m.any() and len(notes) == 1


def _ellipsoid_grid(shape=(64, 64, 40), v=(1.0, 1.0, 2.0)):
    x, y, z = np.meshgrid(*[(np.arange(k) - (k - 1) / 2) * vi for k, vi in zip(shape, v)], indexing="ij")
    return x, y, z, (x / 28) ** 2 + (y / 26) ** 2 + (z / 34) ** 2 < 1


def test_lbv_removes_a_field_from_sources_outside_and_keeps_one_from_inside():
    """LBV on anisotropic voxels: the field of a dipole outside the brain (harmonic inside) goes, a
    local bump inside stays, and only the boundary layer loses its values."""
    from pedq_deploy.preprocess import lbv

    v = (1.0, 1.0, 2.0)
    x, y, z, mask = _ellipsoid_grid(v=v)
    # a point dipole 30 mm below the mask, along z: (3 cos^2 - 1) / r^3
    dz = z + 34 + 30
    r2 = x**2 + y**2 + dz**2
    background = 2e4 * (3 * dz**2 / r2 - 1) / r2**1.5
    bump = 0.05 * np.exp(-((x - 3) ** 2 + (y + 2) ** 2 + (z - 4) ** 2) / (2 * 3.0**2))
    local, covered = lbv(background + bump, mask, v)
    assert covered.sum() > 0.85 * mask.sum() and not covered[~mask].any()  # one voxel off the edge
    assert np.abs(background[covered]).max() > 10 * np.abs(bump).max()  # the background dominates the total ...
    err = np.linalg.norm((local - bump)[covered]) / np.linalg.norm(bump[covered])
    assert err < 0.1, err  # ... and is gone, up to the 7-point Laplacian's error on a field this curved
    vs_local, vs_mask = vsharp(background + bump, mask, v)
    assert covered.sum() > 1.3 * vs_mask.sum()  # it covers more of the brain than V-SHARP ...
    assert err < np.linalg.norm((vs_local - bump)[vs_mask]) / np.linalg.norm(bump[vs_mask])  # ... with a smaller error here
    with pytest.raises(InputError, match="interior"):
        lbv(background, np.zeros(mask.shape, bool), v)
    with pytest.raises(InputError, match="erode"):
        lbv(background, mask, v, erode=0)


def test_the_pipeline_removes_the_background_with_the_method_its_settings_name(small_subject):
    from pedq_deploy.config import PipelineConfig
    from pedq_deploy.runtime.pipeline import run_case

    s = small_subject
    runs = {
        bg: run_case(
            s.magnitude,
            s.phase,
            s.affine,
            s.voxel_size,
            PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength, inversion="tkd", background=bg),
            mask=s.brain_mask,
        )
        for bg in ("vsharp", "lbv")
    }
    assert runs["lbv"].info["coverage"] > runs["vsharp"].info["coverage"]
    assert not np.array_equal(runs["lbv"].local_field, runs["vsharp"].local_field)
    with pytest.raises(InputError, match="unknown background"):
        PipelineConfig(echo_time=0.005, field_strength=3.0, background="pdf").validate()


def test_fill_rim_gives_tv_values_on_the_whole_brain_mask(small_subject):
    from pedq_deploy.config import PipelineConfig
    from pedq_deploy.runtime.pipeline import run_case

    s = small_subject
    runs = {
        fill: run_case(
            s.magnitude,
            s.phase,
            s.affine,
            s.voxel_size,
            PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength, inversion="tv", fill_rim=fill, tv_iterations=20),
            mask=s.brain_mask,
        )
        for fill in (False, True)
    }
    plain, filled = runs[False], runs[True]
    assert plain.info["coverage"] < 0.95 and not plain.info["rim_filled"]
    assert filled.info["coverage"] == 1.0 and filled.info["rim_filled"] and filled.info["chi_reference"] == "mean over the brain mask"
    rim = s.brain_mask & (plain.qsm == 0)
    assert np.count_nonzero(filled.qsm[rim]) > 0.9 * rim.sum() and np.all(filled.qsm[~s.brain_mask] == 0)
    with pytest.raises(InputError, match="fill_rim must be true or false"):
        PipelineConfig(echo_time=0.005, field_strength=3.0, fill_rim="yes").validate()
