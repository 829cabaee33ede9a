"""Plausibility checks of a deep grey matter segmentation, structure by structure.

A segmentation network that has not learnt a head well does not fail loudly: it returns labels,
and ``regions.csv`` turns them into susceptibility values that look like any others. These
checks catch the failures that anatomy rules out, without any reference segmentation:

* ``missing``: the structure has no voxel.
* ``wrong_side``: its centre lies on the other side of the brain's midline than its name says
  (world left-right, RAS: ``x`` grows to the subject's right).
* ``fragmented``: its largest connected piece holds less than ``min_largest_component`` of its
  voxels (the structures are each one compact body).
* ``asymmetric``: it is more than ``max_lr_ratio`` times larger or smaller than its partner on
  the other side (the paired structures are of about equal size, in neonates as in adults).

A structure that passes them all is not proven right, only not proven wrong: these checks are
necessary, not sufficient (``benchmarks/bench_heads.py`` reports the Dice of the structures
that pass and of those flagged).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from ..errors import InputError

__all__ = ["SEG_QC_THRESHOLDS", "segmentation_checks"]

SEG_QC_THRESHOLDS = {"min_largest_component": 0.8, "max_lr_ratio": 2.0}


def _side(name: str) -> int:
    """-1 for a left structure, +1 for a right one (RAS x), 0 when the name says neither."""
    return -1 if name.startswith("Left-") else 1 if name.startswith("Right-") else 0


def _partner(name: str, names: dict[int, str]) -> int | None:
    swap = name.replace("Left-", "\0").replace("Right-", "Left-").replace("\0", "Right-")
    return next((k for k, v in names.items() if v == swap and v != name), None)


def segmentation_checks(
    labels: np.ndarray, mask: np.ndarray, affine: np.ndarray, names: dict[int, str], *, thresholds: dict | None = None
) -> dict[int, list[str]]:
    """The flags of each structure in ``names`` (label number -> FreeSurfer name): ``[]`` when it
    passes every check. ``labels`` and the brain ``mask`` share the grid that ``affine`` (voxel ->
    RAS mm) places in the world."""
    t = {**SEG_QC_THRESHOLDS, **(thresholds or {})}
    lab = np.asarray(labels)
    m = np.asarray(mask) > 0
    a = np.asarray(affine, np.float64)
    if lab.shape != m.shape or lab.ndim != 3:
        raise InputError(f"labels {lab.shape} and mask {m.shape} must be 3D volumes on one grid")
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise InputError("the affine must be a finite 4x4 matrix")
    if not m.any():
        raise InputError("the brain mask is empty")
    world_x = lambda idx: float(a[0, :3] @ np.array([i.mean() for i in idx]) + a[0, 3])  # noqa: E731
    midline = world_x(np.nonzero(m))
    wanted = np.where(np.isin(lab, list(names)), lab, 0).astype(np.int64)
    boxes = ndi.find_objects(wanted)  # each structure's bounding box: the checks look there only
    parts = {}  # label -> (its box, its voxels in the box)
    for k in names:
        box = boxes[k - 1] if 0 < k <= len(boxes) else None  # None: the label is absent
        if box is not None:
            parts[k] = (box, wanted[box] == k)
    counts = {k: int(np.count_nonzero(parts[k][1])) if k in parts else 0 for k in names}
    flags: dict[int, list[str]] = {}
    for k, name in names.items():
        f = []
        if counts[k] == 0:
            flags[k] = ["missing"]
            continue
        box, inside = parts[k]
        side = _side(name)
        centre = tuple(i + b.start for i, b in zip(np.nonzero(inside), box))
        if side and np.sign(world_x(centre) - midline) == -side:
            f.append("wrong_side")
        pieces, n = ndi.label(inside, structure=np.ones((3, 3, 3), bool))
        if n > 1 and np.bincount(pieces.ravel())[1:].max() < t["min_largest_component"] * counts[k]:
            f.append("fragmented")
        other = _partner(name, names)
        if other is not None and counts[other] and max(counts[k], counts[other]) > t["max_lr_ratio"] * min(counts[k], counts[other]):
            f.append("asymmetric")
        flags[k] = f
    return flags
