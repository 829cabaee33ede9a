"""The B0-aligned frame: geometry and physics (a sphere's field) with known answers."""

import numpy as np
import pytest

from pedq_deploy.errors import InputError
from pedq_deploy.frame import B0Frame, mask_box, rotation_to_z
from pedq_deploy.physics import forward_field


def _tilted(deg, axis=(1.0, 0.0, 0.0)):
    t = np.radians(deg)
    a = np.asarray(axis) / np.linalg.norm(axis)
    # rotate z about a horizontal axis a (Rodrigues applied to z)
    z = np.array([0.0, 0.0, 1.0])
    return z * np.cos(t) + np.cross(a, z) * np.sin(t) + a * (a @ z) * (1 - np.cos(t))


@pytest.mark.parametrize("deg", [0.0, 10.0, 30.0, 89.0])
def test_rotation_maps_b0_to_z(deg):
    b = _tilted(deg, (1.0, 2.0, 0.0))
    r = rotation_to_z(b)
    np.testing.assert_allclose(r @ b, [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    # B0 pointing down is the same kernel: no half-turn
    np.testing.assert_allclose(rotation_to_z(-b), r, atol=1e-12)


@pytest.mark.parametrize("order", [1, 3])
def test_an_untilted_frame_on_the_same_grid_samples_the_volume_exactly(order):
    # B0 along z and the frame's voxel equal to the grid's: every frame point is a grid point, so an
    # interpolating spline of any order returns the values themselves (a cubic B-spline without its
    # prefilter would smooth them instead)
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((12, 10, 8)).astype(np.float32)
    fr = B0Frame.build(vol.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), 1.0)
    assert fr.frame_shape == vol.shape
    np.testing.assert_allclose(fr.to_frame(vol, order=order), vol, atol=1e-4)
    np.testing.assert_allclose(fr.from_frame(vol, order=order), vol, atol=1e-4)


def test_round_trip_of_a_smooth_volume():
    shape, v = (40, 44, 20), (1.0, 1.0, 2.0)
    g = np.meshgrid(*[np.arange(n) * d for n, d in zip(shape, v)], indexing="ij")
    vol = (np.sin(g[0] / 7.0) + np.cos(g[1] / 9.0) * g[2] / 40.0).astype(np.float32)
    fr = B0Frame.build(shape, v, _tilted(20.0), 1.0)
    assert fr.tilt_deg == pytest.approx(20.0)
    back = fr.from_frame(fr.to_frame(vol))
    inner = fr.from_frame(fr.to_frame(np.ones(shape, np.float32))) > 0.999
    assert inner.mean() > 0.6
    err = np.abs(back - vol)[inner].max()
    assert err < 0.02  # linear interpolation twice on a smooth field


def test_field_in_frame_is_the_field_of_b0_along_z():
    """A sphere's field computed with a tilted B0, rotated into the frame, equals the field computed
    in the frame with B0 along z; ignoring the tilt is several times worse."""
    shape, v = (80, 80, 40), (1.0, 1.0, 2.0)
    b = _tilted(30.0)
    g = np.stack(np.meshgrid(*[(np.arange(n) - n / 2) * d for n, d in zip(shape, v)], indexing="ij"))
    chi = (np.sqrt((g**2).sum(0)) < 14).astype(np.float32) * 0.1
    fr = B0Frame.build(shape, v, b, 1.0)
    in_frame = fr.to_frame(forward_field(chi, v, b))
    chi_f = fr.to_frame(chi)
    inside = fr.to_frame(np.ones(shape, np.float32)) > 0.999
    rel = lambda a: np.linalg.norm((a - in_frame)[inside]) / np.linalg.norm(in_frame[inside])  # noqa: E731
    right = rel(forward_field(chi_f, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)))
    wrong = rel(fr.to_frame(forward_field(chi, v, (0.0, 0.0, 1.0))))
    assert right < 0.1
    assert wrong > 4 * right


def test_box_limits_the_grid_and_bad_input_raises():
    mask = np.zeros((50, 50, 30), bool)
    mask[20:30, 15:35, 10:20] = True
    box = mask_box(mask, (1.0, 1.0, 1.0), margin_mm=2.0)
    assert box == (slice(18, 32), slice(13, 37), slice(8, 22))
    fr = B0Frame.build(mask.shape, (1.0, 1.0, 1.0), (0, 0, 1), 1.0, box=box)
    assert fr.frame_shape == (14, 24, 14)
    back = fr.from_frame(fr.to_frame(mask.astype(np.float32)))
    np.testing.assert_array_equal(back > 0.5, mask)
    with pytest.raises(InputError):
        mask_box(np.zeros((4, 4, 4), bool), (1, 1, 1))
    with pytest.raises(InputError):
        rotation_to_z((0, 0, 0))
    with pytest.raises(InputError):
        fr.to_frame(np.zeros((3, 3, 3)))


@pytest.mark.parametrize("seed,age,tilt", [(21, "neonate", 0.0), (22, "infant", 30.0)])
def test_deep_grey_matter_box_holds_every_structure(seed, age, tilt):
    from pedq_deploy.phantom import make_subject
    from pedq_deploy.runtime.networks import dgm_box

    s = make_subject(seed=seed, age=age, tilt_deg=tilt, shape=(128, 128, 40), voxel_size=(1.56, 1.56, 4.0))
    box = dgm_box(s.brain_mask)
    inside = np.zeros(s.labels.shape, bool)
    inside[box] = True
    assert (s.labels > 0).any() and not ((s.labels > 0) & ~inside).any()
    assert inside.sum() < 0.5 * np.prod([b.stop - b.start for b in mask_box(s.brain_mask, s.voxel_size, 0.0)])


def test_deep_grey_matter_box_fraction_and_shift_per_axis():
    """A slab of known extent: the box is the centre +- fraction * half extent, moved by shift *
    half extent, axis by axis, and stays inside the mask's extent."""
    from pedq_deploy.runtime.networks import dgm_box

    m = np.zeros((60, 50, 40), bool)
    m[10:51, 5:46, 0:40] = True  # centres 30, 25, 19.5; half extents 20, 20, 19.5
    assert dgm_box(m, 0.5) == (slice(20, 41), slice(15, 36), slice(9, 31))
    assert dgm_box(m, (0.5, 0.25, 1.0), (0.25, -0.5, 0.0)) == (slice(25, 46), slice(10, 21), slice(0, 40))
    assert dgm_box(m, 0.5, 2.0) == (slice(50, 51), slice(45, 46), slice(39, 40))  # pushed out: one voxel at the edge, never empty
    with pytest.raises(InputError, match="empty"):
        dgm_box(np.zeros((4, 4, 4), bool))


def test_mask_from_probability_keeps_the_largest_component_above_the_threshold_filled():
    from pedq_deploy.runtime.networks import mask_from_probability

    p = np.zeros((30, 30, 30), np.float32)
    p[5:20, 5:20, 5:20] = 0.8  # the brain, with a hole ...
    p[10:13, 10:13, 10:13] = 0.1
    p[5:20, 5:20, 19] = 0.6  # ... and a rim of doubtful voxels
    p[25:28, 25:28, 25:28] = 0.95  # a smaller detached blob
    at_half = mask_from_probability(p, 0.5)
    assert at_half.sum() == 15**3 and at_half[11, 11, 11] and not at_half[26, 26, 26]
    assert mask_from_probability(p, 0.7).sum() == 15 * 15 * 14  # the rim drops out
    with pytest.raises(InputError, match="between 0 and 1"):
        mask_from_probability(p, 1.0)
    with pytest.raises(InputError, match="found no brain"):
        mask_from_probability(p, 0.99)
    notched = p.copy()
    notched[12:14, 5:8, 10:12] = 0.1  # a notch 2 voxels wide in the brain's surface
    assert mask_from_probability(notched, 0.5).sum() == 15**3 - 12
    closed = mask_from_probability(notched, 0.5, 2.0, (1, 1, 1))
    assert closed[12:14, 6:8, 10:12].all()  # closing fills the notch below its mouth (the surface layer stays open)
    assert closed.sum() >= 15**3 - 4 and closed[5:20, 5:20, 5:20].sum() == closed.sum()  # nothing outside the brain
    with pytest.raises(InputError, match="voxel size"):
        mask_from_probability(notched, 0.5, 2.0)
