import numpy as np
import pytest
from conftest import ball
from scipy import ndimage as ndi

from pedq_deploy.errors import InputError
from pedq_deploy.inversion import structure_edge_weight, tkd, tv_admm
from pedq_deploy.metrics import edge_sharpness, nrmse
from pedq_deploy.physics import forward_field

VS = (1.0, 1.0, 2.0)
SHAPE = (80, 80, 40)
B_TILT = np.array([0.35, 0.25, 0.90]) / np.linalg.norm([0.35, 0.25, 0.90])


@pytest.fixture(scope="module")
def spheres():
    mask = ball(SHAPE, VS, (0, 0, 0), 34.0) > 0.5
    chi = np.zeros(SHAPE, np.float32)
    for c, r, v in [((-8, -6, -6), 7.0, 0.10), ((10, 8, 6), 5.0, -0.05), ((2, 12, -14), 4.0, 0.20)]:
        chi += ball(SHAPE, VS, c, r) * v
    chi = np.where(mask, chi - chi[mask].mean(), 0).astype(np.float32)
    field = forward_field(chi, VS, B_TILT) * mask
    return chi, field, mask


def test_tkd_needs_the_true_b0_direction(spheres):
    chi, field, mask = spheres
    right = nrmse(tkd(field, mask, VS, B_TILT), chi, mask)
    wrong = nrmse(tkd(field, mask, VS, (0, 0, 1)), chi, mask)
    assert right < 0.5
    assert wrong > 1.5 * right


def test_tv_beats_tkd_on_piecewise_constant_sources(spheres):
    chi, field, mask = spheres
    t = tv_admm(field, mask, VS, B_TILT, iterations=40)
    assert nrmse(t, chi, mask) < 0.6 * nrmse(tkd(field, mask, VS, B_TILT), chi, mask)
    assert nrmse(t, chi, mask) < 0.15


@pytest.mark.parametrize("method", [tkd, tv_admm])
def test_inversion_output_is_referenced_and_masked(spheres, method):
    _, field, mask = spheres
    out = method(field, mask, VS, B_TILT)
    assert out.dtype == np.float32
    assert np.all(out[~mask] == 0)
    assert abs(float(out[mask].mean())) < 1e-6


def test_tv_prior_weight_zero_is_plain_tv_and_a_huge_one_returns_the_prior(spheres):
    chi, field, mask = spheres
    plain = tv_admm(field, mask, VS, B_TILT, iterations=40)
    np.testing.assert_array_equal(tv_admm(field, mask, VS, B_TILT, iterations=40, prior=2 * chi, prior_weight=0.0), plain)
    assert nrmse(tv_admm(field, mask, VS, B_TILT, iterations=40, prior=2 * chi, prior_weight=100.0), 2 * chi, mask) < 1e-2


def test_tv_prior_right_in_the_cone_helps_and_a_wrong_amplitude_is_pulled_back_by_the_field(spheres):
    """The network's failure mode: the right shapes at twice the amplitude. Where D(k)^2 >> alpha the
    field decides, so the refined map's error is a fraction of the prior's; a correct prior lowers
    TV's own error, more so the heavier it weighs."""
    chi, field, mask = spheres
    plain = nrmse(tv_admm(field, mask, VS, B_TILT, iterations=40), chi, mask)
    errs = [nrmse(tv_admm(field, mask, VS, B_TILT, iterations=40, prior=chi, prior_weight=a), chi, mask) for a in (0.01, 0.03, 0.3)]
    assert plain > errs[0] > errs[1] > errs[2] and errs[2] < 0.4 * plain
    assert nrmse(2 * chi, chi, mask) == pytest.approx(1.0, abs=1e-6)
    assert nrmse(tv_admm(field, mask, VS, B_TILT, iterations=40, prior=2 * chi, prior_weight=0.03), chi, mask) < 0.4
    assert nrmse(tv_admm(field, mask, VS, B_TILT, iterations=40, prior=2 * chi, prior_weight=0.01), chi, mask) < 0.15


def test_structure_edge_weight_marks_both_sides_of_every_label_change():
    lab = np.zeros((7, 6, 5), np.int16)
    lab[2:5, 1:4, 1:4] = 10
    lab[5, 1:4, 1:4] = 11  # touches structure 10: that boundary is marked too
    w = structure_edge_weight(lab, 0.2)
    assert w.dtype == np.float32 and set(np.unique(w)) == {np.float32(0.2), np.float32(1.0)}
    assert w[1, 2, 2] == w[2, 2, 2] == w[4, 2, 2] == w[5, 2, 2] == w[6, 2, 2] == np.float32(0.2)
    assert w[3, 2, 2] == 1.0  # the centre of structure 10 is a voxel from every change
    assert w[0, 2, 2] == 1.0 and w[3, 5, 2] == 1.0
    assert structure_edge_weight(lab, 0.2, band=2)[0, 2, 2] == np.float32(0.2)
    np.testing.assert_array_equal(structure_edge_weight(np.zeros((4, 4, 4), np.int32), 0.0), 1.0)
    for bad in (
        dict(labels=lab.astype(np.float32), weight=0.2),
        dict(labels=lab[0], weight=0.2),
        dict(labels=lab, weight=1.5),
        dict(labels=lab, weight=np.nan),
        dict(labels=lab, weight=0.2, band=0),
    ):
        with pytest.raises(InputError):
            structure_edge_weight(**bad)


def test_structure_edge_weight_across_weights_only_the_differences_that_cross_a_boundary():
    lab = np.zeros((9, 8, 8), np.int16)
    lab[3:6, 1:6, 1:6] = 10
    w = structure_edge_weight(lab, 0.2, across=True)
    assert w.shape == (3,) + lab.shape and w.dtype == np.float32
    # along axis 0 through the structure: the differences 2->3 and 5->6 cross it, the rest do not
    np.testing.assert_array_equal(w[0, :, 3, 3], np.float32([1, 1, 0.2, 1, 1, 0.2, 1, 1, 1]))
    # on the structure's face (voxel 3, 3, 3), the differences along the face keep the full weight
    assert w[1, 3, 3, 3] == w[2, 3, 3, 3] == 1.0
    # but across its sides along axis 1 they are lowered (0->1 and 5->6)
    np.testing.assert_array_equal(w[1, 4, :, 3], np.float32([0.2, 1, 1, 1, 1, 0.2, 1, 1]))
    # band 2: one more difference on either side of each crossing, along the same axis only
    w2 = structure_edge_weight(lab, 0.2, band=2, across=True)
    np.testing.assert_array_equal(w2[0, :, 3, 3], np.float32([1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 1, 1]))
    np.testing.assert_array_equal(w2[1, 4, :, 3], np.float32([0.2, 0.2, 1, 1, 0.2, 0.2, 0.2, 1]))
    assert w2[1, 3, 3, 3] == w2[2, 3, 3, 3] == 1.0
    np.testing.assert_array_equal(structure_edge_weight(np.zeros((4, 4, 4), np.int32), 0.0, across=True), 1.0)


def test_tv_weight_of_one_is_plain_tv_and_a_low_weight_on_known_boundaries_sharpens_them(spheres):
    """Noisy field, heavy TV: the sources' edges blur. With the TV weight lowered on their boundaries
    (the labels of the true spheres) the edges come back as sharp as the truth's and the map's error
    falls; TV still smooths the noise everywhere else. A labelled "ghost" structure where chi is flat
    gains no edge: the weight permits an edge, the field has to make it."""
    chi, field, mask = spheres
    labels = np.zeros(SHAPE, np.int32)
    for i, (c, r) in enumerate([((-8, -6, -6), 7.0), ((10, 8, 6), 5.0), ((2, 12, -14), 4.0), ((-10, 12, 8), 6.0)]):
        labels[ball(SHAPE, VS, c, r) > 0.5] = i + 1
    real, ghost = np.where(labels < 4, labels, 0), labels == 4
    assert np.ptp(chi[ndi.binary_dilation(ghost, iterations=2)]) == 0
    noisy = (field + np.random.default_rng(0).normal(0, 0.004, SHAPE)).astype(np.float32) * mask
    plain = tv_admm(noisy, mask, VS, B_TILT, lam=3e-3, iterations=40)
    np.testing.assert_array_equal(tv_admm(noisy, mask, VS, B_TILT, lam=3e-3, iterations=40, tv_weight=np.ones(SHAPE)), plain)
    guided = tv_admm(noisy, mask, VS, B_TILT, lam=3e-3, iterations=40, tv_weight=structure_edge_weight(labels, 0.0))
    e_plain, e_guided = edge_sharpness(plain, chi, real), edge_sharpness(guided, chi, real)
    assert e_plain < 0.8 and e_guided == pytest.approx(1.0, abs=0.1)
    assert nrmse(guided, chi, mask) < 0.6 * nrmse(plain, chi, mask)

    def contrast(x, sel):  # inside minus a 2-voxel shell outside
        return float(x[sel].mean() - x[ndi.binary_dilation(sel, iterations=2) & (labels != labels[sel][0])].mean())

    assert contrast(chi, labels == 1) > 0.08
    assert abs(contrast(guided, ghost)) < 0.02 * contrast(chi, labels == 1)


def test_tv_weight_across_boundaries_sharpens_them_with_less_noise_inside_than_a_voxel_band(spheres):
    """Lowering TV only on the differences across the true boundaries makes the edges as the voxel
    band does, but TV keeps smoothing along the boundary, so the noise within the structures stays
    lower than with the band's every difference freed. Weights of one per difference are plain TV."""
    chi, field, mask = spheres
    labels = np.zeros(SHAPE, np.int32)
    for i, (c, r) in enumerate([((-8, -6, -6), 7.0), ((10, 8, 6), 5.0), ((2, 12, -14), 4.0)]):
        labels[ball(SHAPE, VS, c, r) > 0.5] = i + 1
    noisy = (field + np.random.default_rng(1).normal(0, 0.004, SHAPE)).astype(np.float32) * mask
    fit = lambda w: tv_admm(noisy, mask, VS, B_TILT, lam=3e-3, iterations=40, tv_weight=w)  # noqa: E731
    plain = fit(None)
    np.testing.assert_array_equal(fit(np.ones((3,) + SHAPE, np.float32)), plain)
    across, band = fit(structure_edge_weight(labels, 0.0, 2, across=True)), fit(structure_edge_weight(labels, 0.0, 2))
    e_plain, e_across, e_band = (edge_sharpness(x, chi, labels) for x in (plain, across, band))
    assert e_plain < 0.8 and e_across > e_plain + 0.15 and e_across > 0.9

    def inside_sd(x):  # the error's SD within each structure, mean over structures
        return np.mean([float((x - chi)[labels == k].std()) for k in (1, 2, 3)])

    assert inside_sd(across) < 0.8 * inside_sd(band)
    assert nrmse(across, chi, mask) < 0.7 * nrmse(plain, chi, mask)


def test_tv_with_a_data_mask_recovers_sources_in_the_rim_where_the_field_is_unknown():
    """Field known only in the brain eroded by 8 mm (as V-SHARP leaves it), a source straddling
    the rim: solved over the whole brain, TV gives the rim the source whose field the interior
    sees; on the eroded mask alone the rim has no values and the interior pays for the source."""
    vs, shape = (1.0, 1.0, 2.0), (64, 64, 32)
    brain = ball(shape, vs, (0, 0, 0), 26.0) > 0.5
    inner = ball(shape, vs, (0, 0, 0), 18.0) > 0.5
    chi = ball(shape, vs, (0, 20, 4), 5.0) * 0.2 + ball(shape, vs, (-4, -6, 0), 6.0) * 0.1  # one in the rim, one inside
    chi = np.where(brain, chi - chi[brain].mean(), 0).astype(np.float32)
    field = forward_field(chi, vs, B_TILT)
    known = np.where(inner, field, 0).astype(np.float32)
    eroded_only = tv_admm(known, inner, vs, B_TILT, iterations=80)
    filled = tv_admm(known, brain, vs, B_TILT, iterations=80, data_mask=inner)
    rim = brain & ~inner
    assert np.all(filled[~brain] == 0) and abs(float(filled[brain].mean())) < 1e-6
    assert np.corrcoef(filled[rim], chi[rim])[0, 1] > 0.6
    assert nrmse(filled, chi, brain) < 0.75 * nrmse(eroded_only, chi, brain)
    assert nrmse(filled, chi, inner) < nrmse(eroded_only, chi, inner)
    # the field known on the whole brain: the closed form takes it as zero outside the brain, where
    # the sources' fields in fact go on; the split form leaves it unknown there and does better
    full = tv_admm(np.where(brain, field, 0), brain, vs, B_TILT, iterations=80)
    split = tv_admm(np.where(brain, field, 0), brain, vs, B_TILT, iterations=80, data_mask=brain)
    assert nrmse(split, chi, brain) < 0.5 * nrmse(full, chi, brain)


def test_inversion_rejects_bad_input(spheres):
    _, field, mask = spheres
    with pytest.raises(InputError):
        tkd(field, np.zeros_like(mask), VS)
    with pytest.raises(InputError):
        tkd(field, mask, VS, threshold=0.9)
    with pytest.raises(InputError):
        tv_admm(field, mask, VS, lam=-1.0)
    with pytest.raises(InputError):
        tkd(np.where(mask, np.nan, field), mask, VS)
    with pytest.raises(InputError, match="needs a prior map"):
        tv_admm(field, mask, VS, prior_weight=0.1)
    with pytest.raises(InputError, match="prior weight must be >= 0"):
        tv_admm(field, mask, VS, prior=field, prior_weight=-0.1)
    with pytest.raises(InputError, match="prior shape"):
        tv_admm(field, mask, VS, prior=field[:-1], prior_weight=0.1)
    with pytest.raises(InputError, match="NaN or infinite"):
        tv_admm(field, mask, VS, prior=np.where(mask, np.nan, field), prior_weight=0.1)
    with pytest.raises(InputError, match="TV weight map shape"):
        tv_admm(field, mask, VS, tv_weight=np.ones(field.shape[:-1] + (3,)))
    with pytest.raises(InputError, match="TV weight map shape"):
        tv_admm(field, mask, VS, tv_weight=np.ones((2,) + field.shape))
    with pytest.raises(InputError, match="data mask shape"):
        tv_admm(field, mask, VS, data_mask=mask[:-1])
    with pytest.raises(InputError, match="data mask is empty"):
        tv_admm(field, mask, VS, data_mask=np.zeros_like(mask))
    with pytest.raises(InputError, match="inside the mask"):
        tv_admm(field, mask, VS, data_mask=np.ones_like(mask))
    for bad in (-0.1, 1.5, np.nan):
        with pytest.raises(InputError, match=r"in \[0, 1\]"):
            tv_admm(field, mask, VS, tv_weight=np.full(field.shape, bad))
