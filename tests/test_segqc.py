"""Segmentation plausibility checks on a phantom's true labels, then on labels broken in known ways."""

import numpy as np
import pytest

from pedq_deploy.errors import InputError
from pedq_deploy.metrics import FS_DGM_NAMES
from pedq_deploy.phantom import make_subject
from pedq_deploy.postprocess import segmentation_checks


@pytest.fixture(scope="module")
def head():
    s = make_subject(seed=3, age="infant", shape=(64, 64, 48), voxel_size=(2.5, 2.5, 2.5), tilt_deg=20, snr=float("inf"))
    return s.labels.astype(np.int16), s.brain_mask, s.affine


def test_true_labels_pass_every_check(head):
    labels, mask, affine = head
    assert segmentation_checks(labels, mask, affine, FS_DGM_NAMES) == {k: [] for k in FS_DGM_NAMES}


def test_a_head_seen_from_the_other_side_puts_every_structure_on_the_wrong_side(head):
    labels, mask, affine = head
    swapped = labels.copy()
    for left, right in ((10, 49), (11, 50), (12, 51), (13, 52)):
        swapped[labels == left], swapped[labels == right] = right, left
    flags = segmentation_checks(swapped, mask, affine, FS_DGM_NAMES)
    assert all(f == ["wrong_side"] for f in flags.values()), flags
    # the true labels under an affine that mirrors the world's left-right axis: all on the wrong side too
    flip = affine @ np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = affine[0, 3] + affine[0, 0] * (labels.shape[0] - 1)
    assert all(f == ["wrong_side"] for f in segmentation_checks(labels, mask, flip, FS_DGM_NAMES).values())


def test_missing_fragmented_and_asymmetric_structures_are_named(head):
    labels, mask, affine = head
    broken = labels.copy()
    broken[broken == 13] = 0  # left pallidum gone
    # right thalamus: a second, larger piece far from the first (a false positive in the cortex)
    centre = np.array([ix.mean() for ix in np.nonzero(labels == 49)]).round().astype(int)
    n = int((labels == 49).sum())
    side = int(np.ceil((2 * n) ** (1 / 3)))
    far = np.array(np.nonzero(mask)).T
    far = far[np.argmax(((far - centre) ** 2).sum(1))]
    lo = np.clip(far - side // 2, 0, np.array(labels.shape) - side)
    box = tuple(slice(a, a + side) for a in lo)
    broken[box][broken[box] == 0] = 49
    flags = segmentation_checks(broken, mask, affine, FS_DGM_NAMES)
    assert flags[13] == ["missing"] and flags[52] == []  # a missing partner leaves the other unjudged
    assert "fragmented" in flags[49] and "asymmetric" in flags[49] and "asymmetric" in flags[10]
    assert all(flags[k] == [] for k in (11, 12, 50, 51))


def test_bad_inputs_raise(head):
    labels, mask, affine = head
    with pytest.raises(InputError, match="one grid"):
        segmentation_checks(labels[:-1], mask, affine, FS_DGM_NAMES)
    with pytest.raises(InputError, match="empty"):
        segmentation_checks(labels, np.zeros_like(mask), affine, FS_DGM_NAMES)
    with pytest.raises(InputError, match="4x4"):
        segmentation_checks(labels, mask, affine[:3], FS_DGM_NAMES)
