"""PedQ-NET at inference: the three exported networks behind runners, on NumPy arrays (no torch).

The networks were trained on an isotropic grid (the manifest's ``voxel_size_mm``): volumes are
resampled to it for inference and the results resampled back to the input grid. The
reconstruction network works in the B0-aligned frame (:mod:`pedq_deploy.frame`): the local field
is rotated so that B0 lies along the network's z axis (tilted heads, any voxel size) in the same
interpolation that brings it to the network's voxel size, and chi is rotated back.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from ..backends import load_manifest, make_runner
from ..config import MASK_CLOSING_MM, MASK_THRESHOLD
from ..errors import InputError
from ..frame import B0Frame, mask_box
from ..preprocess import close_mask, normalise_magnitude
from .sliding_window import sliding_window_inference

__all__ = ["PedqModels", "find_models", "resample_to", "resample_back", "dgm_box", "seg_grid", "mask_from_probability"]

ENV = "PEDQ_MODELS"


def find_models(models_dir: str | Path | None = None) -> Path | None:
    """Where the models are: the argument, else $PEDQ_MODELS, else the models shipped in the package.

    ``none`` (as the argument or in $PEDQ_MODELS) means no models: the conventional pipeline only.
    """
    if models_dir is not None:
        return None if str(models_dir) == "none" else Path(models_dir)
    if os.environ.get(ENV):
        return None if os.environ[ENV] == "none" else Path(os.environ[ENV])
    try:
        shipped = Path(str(resources.files("pedq_deploy._models")))
    except ModuleNotFoundError:
        return None
    return shipped if (shipped / "recon.json").is_file() else None


DGM_BOX_FRACTION = 0.65


def dgm_box(mask: np.ndarray, fraction=DGM_BOX_FRACTION, shift=0.0) -> tuple[slice, slice, slice]:
    """The central box where the deep grey matter lies: the brain's centre of mass +- ``fraction``
    of the brain's half extent along each axis. Thalami, caudate, putamen and pallidum sit within
    about half the half extent of the centre (in neonates and infants, tilted up to 30 degrees on
    the phantom: at most 0.52 / 0.40 / 0.25 along x / y / z), so 0.65 leaves a margin and the
    segmentation network runs on about a quarter of the brain's bounding box.

    ``fraction`` and ``shift`` (the centre moved by that share of the half extent) may be one
    number or one per axis: ``pedq-train seg`` draws them at random, so that the network meets the
    boxes other masks give (a masking network's mask reaches further in z: a box 1.1-1.4 times as
    long)."""
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        raise InputError("the brain mask is empty")
    fraction, shift = np.broadcast_to(np.asarray(fraction, float), (3,)), np.broadcast_to(np.asarray(shift, float), (3,))
    box = []
    for ax in range(3):
        lo, hi = int(idx[ax].min()), int(idx[ax].max())
        full = (hi - lo) / 2.0
        c = float(idx[ax].mean()) + shift[ax] * full
        half = full * fraction[ax]
        start = min(max(int(np.floor(c - half)), lo), hi)
        box.append(slice(start, max(min(int(np.ceil(c + half)) + 1, hi + 1), start + 1)))
    return tuple(box)


def resample_to(volume: np.ndarray, voxel_size, target, order: int = 1) -> np.ndarray:
    factors = [v / t for v, t in zip(voxel_size, target)]
    if np.allclose(factors, 1.0, atol=1e-3):
        return np.asarray(volume, np.float32)
    return ndi.zoom(np.asarray(volume, np.float32), factors, order=order, prefilter=False)


def resample_back(volume: np.ndarray, shape, order: int = 1) -> np.ndarray:
    if tuple(volume.shape) == tuple(shape):
        return volume
    out = ndi.zoom(volume, [s / n for s, n in zip(shape, volume.shape)], order=order, prefilter=False)
    fixed = np.zeros(shape, out.dtype)  # zoom may be off by a voxel
    sl = tuple(slice(0, min(a, b)) for a, b in zip(shape, out.shape))
    fixed[sl] = out[sl]
    return fixed


def seg_grid(
    chi: np.ndarray, mask: np.ndarray, voxel_size, target_voxel, fraction=DGM_BOX_FRACTION, shift=0.0
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray]:
    """What the segmentation network sees on the voxel axes: the deep grey matter box of ``mask``
    (:func:`dgm_box`, with ``fraction`` and ``shift``), and chi and the mask there resampled to
    ``target_voxel`` (the network's grid). Returns (box, chi on the network's grid, mask there).
    Training (``pedq-train seg``) draws its crops from the same function, so the network learns
    from what it is given here."""
    box = dgm_box(mask, fraction, shift)
    return (box, *_to_seg_grid(np.asarray(chi, np.float32)[box], np.asarray(mask, bool)[box], voxel_size, target_voxel))


def _to_seg_grid(chi_box: np.ndarray, mask_box: np.ndarray, voxel_size, target_voxel) -> tuple[np.ndarray, np.ndarray]:
    return (resample_to(chi_box, voxel_size, target_voxel), resample_to(mask_box.astype(np.float32), voxel_size, target_voxel) > 0)


def check_threshold(threshold: float) -> None:
    if not 0.0 < threshold < 1.0:
        raise InputError(f"the mask threshold must lie between 0 and 1, got {threshold}")


def mask_from_probability(
    probability: np.ndarray, threshold: float = MASK_THRESHOLD, closing_mm: float = 0.0, voxel_size=None
) -> np.ndarray:
    """The brain mask of a brain probability map: above ``threshold``, its largest component, closed
    by a ball of ``closing_mm`` (:func:`~pedq_deploy.preprocess.close_mask`; needs ``voxel_size``),
    holes filled."""
    check_threshold(threshold)
    if closing_mm and voxel_size is None:
        raise InputError("closing the mask needs the voxel size")
    brain = probability > threshold
    lab, n = ndi.label(brain)
    if n > 1:
        brain = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    if closing_mm:
        brain = close_mask(brain, closing_mm, voxel_size)
    brain = ndi.binary_fill_holes(brain)
    if not brain.any():
        raise InputError("the masking network found no brain: check the magnitude image")
    return brain


class PedqModels:
    """Loads and verifies the manifests once; runners are activated on first use and reused."""

    def __init__(self, models_dir: str | Path, backend: str = "auto", overlap: float = 0.5, batch_size: int = 1):
        d = Path(models_dir)
        if not d.is_dir():
            raise InputError(f"models folder not found: {d}")
        self.manifests = {}
        for role in ("mask", "recon", "seg"):
            if (d / f"{role}.json").is_file():
                self.manifests[role] = load_manifest(d / f"{role}.json")
        if "recon" not in self.manifests:
            raise InputError(f"no reconstruction model (recon.json) in {d}")
        r = self.manifests["recon"]
        if r.raw.get("frame") != "b0" or r.in_channels != 1 or len(set(r.voxel_size)) != 1:
            raise InputError(
                f"{r.path}: not a B0-frame reconstruction model (one input channel, isotropic voxels); "
                "re-export it with this version's pedq-export"
            )
        self.backend, self.overlap, self.batch_size = backend, overlap, batch_size
        self._runners = {}

    def _runner(self, role):
        if role not in self._runners:
            r = make_runner(self.manifests[role], self.backend)
            r.activate()
            self._runners[role] = r
        return self._runners[role]

    def backends_used(self) -> dict[str, str]:
        """The backend each network ran on (``auto`` resolved), for the provenance."""
        return {role: r.name for role, r in self._runners.items()}

    def close(self) -> None:
        for r in self._runners.values():
            r.deactivate()
        self._runners.clear()

    def _run(self, role, volume_c: np.ndarray, roi: np.ndarray | None = None) -> np.ndarray:
        m = self.manifests[role]
        return sliding_window_inference(
            volume_c, m.patch, self._runner(role).predictor(), overlap=self.overlap, batch_size=self.batch_size, roi=roi
        )

    def _mask_probability(self, x: np.ndarray, head: np.ndarray) -> np.ndarray:
        logits = self._run("mask", x[None], head)
        logits[0][~head] = np.maximum(logits[0][~head], logits[1][~head] + 10.0)  # uncovered / air: background
        return np.exp(logits[1] - np.logaddexp(logits[0], logits[1]))

    def has(self, role: str) -> bool:
        return role in self.manifests

    def mask_probability(self, magnitude: np.ndarray, voxel_size) -> np.ndarray:
        """The masking network's brain probability on the input grid."""
        m = self.manifests["mask"]
        x = resample_to(normalise_magnitude(magnitude), voxel_size, m.voxel_size)
        # windows of air alone are not run (the brain lies inside the head's signal); their voxels read background
        head = ndi.binary_dilation(x > 0.1, iterations=2)
        if not head.any():
            raise InputError("the magnitude has no signal above the noise: check the magnitude image")
        return resample_back(self._mask_probability(x, head), magnitude.shape)

    def mask(self, magnitude: np.ndarray, voxel_size, threshold: float = MASK_THRESHOLD, closing_mm: float = MASK_CLOSING_MM) -> np.ndarray:
        """Brain mask: the probability (:meth:`mask_probability`) above ``threshold``, its largest
        component, closed by a ball of ``closing_mm``, holes filled (:func:`mask_from_probability`)."""
        check_threshold(threshold)
        return mask_from_probability(self.mask_probability(magnitude, voxel_size), threshold, closing_mm, voxel_size)

    def reconstruct_in_frame(self, local_field: np.ndarray, mask: np.ndarray, voxel_size, b0) -> tuple[B0Frame, np.ndarray]:
        """The reconstruction network's raw output in its B0-aligned frame, and that frame (built on
        ``mask``'s box): what :meth:`reconstruct` brings back to the input grid."""
        m = self.manifests["recon"]
        frame = B0Frame.build(local_field.shape, voxel_size, b0, m.voxel_size[0], box=mask_box(mask, voxel_size))
        f = frame.to_frame(np.where(mask, local_field, 0.0))
        roi = frame.to_frame(mask.astype(np.float32)) > 0  # windows without brain are not run
        return frame, self._run("recon", f[None], roi)[0]

    def reconstruct(self, local_field: np.ndarray, mask: np.ndarray, voxel_size, b0) -> np.ndarray:
        """chi (ppm, referenced to its mean in ``mask``) from the local field, via the B0-aligned frame."""
        frame, chi_frame = self.reconstruct_in_frame(local_field, mask, voxel_size, b0)
        chi = frame.from_frame(chi_frame)
        return np.where(mask, chi - chi[mask].mean(), 0.0).astype(np.float32)

    def _seg_probability(self, chi: np.ndarray, mask: np.ndarray, voxel_size, b0=None) -> np.ndarray:
        """Class probabilities (C, *chi.shape) of the segmentation network, on the input grid.
        ``b0`` None: the network runs on the voxel axes (resampled to its voxel size); else in the
        B0-aligned frame of ``b0``, in which it was trained (anatomy turned by the head's tilt)."""
        m = self.manifests["seg"]
        if b0 is None:
            x, roi = _to_seg_grid(chi, mask, voxel_size, m.voxel_size)  # chi and mask: the box already (as seg_grid)
            back = lambda a: resample_back(a, chi.shape)  # noqa: E731
        else:
            frame = B0Frame.build(chi.shape, voxel_size, b0, m.voxel_size[0])
            x = frame.to_frame(chi)
            roi = frame.to_frame(mask.astype(np.float32)) > 0
            back = frame.from_frame
        logits = self._run("seg", x[None], roi)
        prob = np.exp(logits - logits.max(axis=0, keepdims=True))
        prob /= prob.sum(axis=0, keepdims=True)
        return np.stack([back(p) for p in prob])

    SEG_ORIENTATIONS = ("voxel", "b0", "both")

    def segment(self, chi: np.ndarray, mask: np.ndarray, voxel_size, b0=None, orientation: str = "voxel") -> np.ndarray:
        """FreeSurfer labels of the 8 deep grey matter structures, on the input grid.

        The network runs on the central box of ``mask`` (:func:`dgm_box`) resampled to its voxel
        size; ``orientation``: ``"voxel"`` on the voxel axes, ``"b0"`` in the B0-aligned frame of
        ``b0`` (as the network was trained), ``"both"`` the mean of the two probabilities. Each
        class probability is interpolated back to the input grid before the most probable class is
        taken."""
        if orientation not in self.SEG_ORIENTATIONS:
            raise InputError(f"segmentation orientation must be one of {', '.join(self.SEG_ORIENTATIONS)}, got {orientation!r}")
        if orientation != "voxel" and b0 is None:
            raise InputError(f"segmentation orientation {orientation!r} needs the B0 direction")
        m = self.manifests["seg"]
        label_map = {int(k): int(v) for k, v in m.raw["label_map"].items()}
        box = dgm_box(mask)
        c, mb = np.asarray(chi, np.float32)[box], np.asarray(mask, bool)[box]
        ways = {"voxel": [None], "b0": [b0], "both": [None, b0]}[orientation]
        prob = sum(self._seg_probability(c, mb, voxel_size, w) for w in ways)
        cls = np.argmax(prob, axis=0)
        sub = np.zeros(cls.shape, np.uint8)
        for k, fs in label_map.items():
            sub[cls == k] = fs
        out = np.zeros(chi.shape, np.uint8)
        out[box] = sub
        out[~mask] = 0
        return out
