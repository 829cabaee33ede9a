"""Training data drawn on the fly from the phantom, reproducibly.

Subject ``i`` of a stream is drawn with seed ``train_seeds[0] + (base_seed * 7919 + i) mod span``
and preprocessed as the runtime would (the config's `unwrap`, Laplacian by default; V-SHARP inside the true brain mask),
so the networks learn from the local fields they will be given, errors and noise included.
For the reconstruction and segmentation networks the preprocessed subject is then resampled into
the B0-aligned frame (:class:`pedq_deploy.frame.B0Frame`), exactly as the runtime does: the network
always sees B0 along its z axis on an isotropic grid, whatever the head's tilt.
The segmentation UNETR alone (``pedq-train seg``) learns instead from the maps an exported
reconstruction network makes of the subject, through the runtime's own code: ``PedqModels.reconstruct``
on the local field, then the deep grey matter box on the voxel axes resampled to the network's grid
(:func:`pedq_deploy.runtime.networks.seg_grid`), as ``pedq-run`` segments.
Crops of one subject come from an RNG seeded by the subject index: the stream's whole state is
two counters, saved in checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from ..frame import B0Frame, mask_box
from ..phantom import make_subject, random_crop
from ..phantom.anatomy import smooth_random_field
from ..phantom.crops import crop_array
from ..phantom.tissues import TISSUES
from ..physics import phase_per_ppm, phase_to_ppm
from ..preprocess import normalise_magnitude, unwrap_phase, vsharp
from ..runtime.networks import DGM_BOX_FRACTION, PedqModels, resample_to, seg_grid
from .config import TrainConfig

__all__ = ["Sample", "SegSubject", "PhantomStream", "prepare_subject", "seg_subject", "subject_local_field"]


@dataclass
class Sample:
    field_ppm: np.ndarray  # network input: local field after V-SHARP
    mask: np.ndarray  # V-SHARP-eroded brain mask (the loss mask)
    weight: np.ndarray  # magnitude weight in [0, 1]
    chi: np.ndarray  # truth, for validation only (referenced to the brain mean)
    labels: np.ndarray  # FreeSurfer labels
    magnitude: np.ndarray  # normalised magnitude (mask network input)
    brain: np.ndarray  # true brain mask (mask network target)
    direction: np.ndarray
    rad_per_ppm: float


def to_b0_frame(s, frame_voxel: float):
    """The preprocessed subject resampled into its B0-aligned frame (the brain's box plus a margin)."""
    fr = B0Frame.build(s.brain_mask.shape, s.voxel_size, s.b0_direction, frame_voxel, box=mask_box(s.brain_mask, s.voxel_size))
    soft = lambda a: fr.to_frame(a.astype(np.float32))  # noqa: E731
    params = dict(
        s.params, loss_mask=soft(s.params["loss_mask"]) > 0.5, magnitude_norm=soft(s.params["magnitude_norm"]), frame_tilt_deg=fr.tilt_deg
    )
    return replace(
        s,
        magnitude=soft(s.magnitude),
        phase=None,
        total_field=None,
        chi=soft(s.chi),
        local_field=soft(s.local_field),
        brain_mask=soft(s.brain_mask) > 0.5,
        labels=fr.to_frame(s.labels, order=0).astype(np.uint8),
        voxel_size=(frame_voxel,) * 3,
        b0_direction=np.array([0.0, 0.0, 1.0]),
        params=params,
    )


def subject_local_field(s, phase=None, unwrap: str = "laplacian", mask=None):
    """(local field in ppm, V-SHARP-eroded mask) of a single-echo phantom subject (``phase``: another
    echo of it, by default its own): unwrapping with ``unwrap`` (one of ``UNWRAP_METHODS``; the
    config's ``unwrap``, while the pipeline's default is ``"lsq"``) and V-SHARP inside ``mask``
    (default: the true brain mask)."""
    phase = s.phase if phase is None else phase
    mask = s.brain_mask if mask is None else mask
    unwrapped = unwrap_phase(phase, s.voxel_size, unwrap, mask=mask, magnitude=s.magnitude)
    total = phase_to_ppm(unwrapped, s.echo_time, s.field_strength)
    return vsharp(total, mask, s.voxel_size)


def _tissue_factors(rng: np.random.Generator, jitter: float) -> dict[str, tuple[float, float]]:
    """Each tissue's (proton density, T2*) factors for one subject: a magnitude contrast of its own."""
    return {
        name: (float(rng.uniform(1.0 - jitter, 1.0 + jitter)), float(np.exp(rng.uniform(-jitter, jitter))))
        for name in sorted(TISSUES)
        if name != "air"
    }


def augment_magnitude(s, cfg: TrainConfig, rng: np.random.Generator) -> None:
    """Randomise a subject's magnitude as scanners and protocols differ (in place; the brain mask is
    cut with it): a smooth bias field, slice thickness, and a field of view that misses part of the
    head. Each is drawn only where the config turns it on."""
    mag = s.magnitude
    v = np.asarray(s.voxel_size, float)
    if cfg.bias_field > 0:
        mag = mag * np.exp(smooth_random_field(rng, mag.shape, 60.0, cfg.bias_field, v)[0]).astype(np.float32)
    if cfg.slice_mm[1] > 0:
        thick = float(rng.uniform(*cfg.slice_mm))
        sigma = np.sqrt(max(thick**2 - v[2] ** 2, 0.0)) / 2.355 / v[2]  # a slice profile of FWHM ``thick``, beyond the voxel's own
        if sigma > 0.05:
            mag = ndi.gaussian_filter1d(mag, sigma, axis=2)
    if cfg.fov_cut > 0 and rng.random() < 0.5:
        axis = int(rng.choice([0, 1, 2, 2]))  # top and bottom most often
        n = mag.shape[axis]
        k = int(round(rng.uniform(0.05, 1.0) * cfg.fov_cut * n))
        keep = [slice(None)] * 3
        keep[axis] = slice(k, None) if rng.random() < 0.5 else slice(0, n - k)
        cut = np.zeros(mag.shape, bool)
        cut[tuple(keep)] = True
        mag = np.where(cut, mag, 0.0)
        s.brain_mask = s.brain_mask & cut
    s.magnitude = mag.astype(np.float32)


def prepare_subject(
    seed: int, cfg: TrainConfig, rng: np.random.Generator, *, frame: bool = False, network_mask=None, magnitude_only: bool = False
):
    """Subject ``seed``, simulated as ``cfg`` draws it with ``rng`` and preprocessed as pedq-run
    would. ``network_mask`` (share, folder): that share of heads is unwrapped and run through
    V-SHARP in the mask of the masking network in the exported models ``folder`` instead of the
    true brain mask (default: the config's ``recon_network_mask`` and ``mask_model``).
    ``magnitude_only`` (masking runs): no field preprocessing; the magnitude is randomised
    (:func:`augment_magnitude`) and the loss mask is the brain."""
    share, folder = (cfg.recon_network_mask, cfg.mask_model) if network_mask is None else network_mask
    age = cfg.ages[int(rng.integers(len(cfg.ages)))]
    te = float(rng.uniform(*cfg.echo_time_range))
    snr = float(np.exp(rng.uniform(np.log(cfg.snr_range[0]), np.log(cfg.snr_range[1]))))
    tilt = float(rng.uniform(0, cfg.max_tilt_deg))
    extra = {}  # drawn only where the config asks, so the configs before these options draw the same heads
    if tuple(cfg.anatomies) != ("procedural",):
        extra["anatomy"] = cfg.anatomies[int(rng.integers(len(cfg.anatomies)))]
    if cfg.contrast_jitter > 0:
        extra["tissue_factors"] = _tissue_factors(rng, cfg.contrast_jitter)
    if cfg.supersample is not None:
        extra["supersample"] = tuple(cfg.supersample)
    s = make_subject(
        seed=seed,
        age=age,
        shape=cfg.grid,
        voxel_size=cfg.voxel_size,
        tilt_deg=tilt,
        echo_time=te,
        field_strength=cfg.field_strength,
        snr=snr,
        **extra,
    )
    if magnitude_only:
        augment_magnitude(s, cfg, rng)
        s.params["loss_mask"] = s.brain_mask
        s.params["magnitude_norm"] = normalise_magnitude(s.magnitude)  # the runtime's own normalisation
        return s
    mask = None
    if share > 0 and rng.random() < share:  # as pedq-run masks by default
        mask = exported_models(folder, "mask").mask(s.magnitude, s.voxel_size, closing_mm=cfg.network_mask_closing)
    s.params["network_mask"] = mask is not None
    local, eroded = subject_local_field(s, unwrap=cfg.unwrap, mask=mask)
    mag = normalise_magnitude(s.magnitude)  # the runtime's own normalisation
    # keep the subject but with the preprocessed field and the eroded mask for the loss
    s.local_field = local
    s.params["loss_mask"] = eroded
    s.params["magnitude_norm"] = mag
    return to_b0_frame(s, cfg.frame_voxel) if frame else s


@dataclass
class SegSubject:
    """One head as the segmentation network meets it in ``pedq-run``: the reconstruction network's
    chi in the deep grey matter box, on the segmentation network's grid, the eroded mask there, and
    the true labels resampled (nearest) to that grid. ``scan``: when crops draw their own boxes
    (``seg_box_*``), chi, the eroded mask and the labels on the scan's grid, and its voxel size."""

    chi: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    seed: int
    scan: tuple | None = None
    network_mask: bool = False


_EXPORTED_MODELS: dict = {}  # exported models folder -> PedqModels, one per process (a data worker keeps its own)


def require_exported(folder: str | None, role: str) -> None:
    """Raise unless the exported models folder ``folder`` holds ``role`` (its manifest)."""
    from ..errors import InputError

    if not folder or not (Path(folder) / f"{role}.json").is_file():
        raise InputError(f"no {role} network ({role}.json) in the exported models folder {folder!r}")


def exported_models(folder: str | None, role: str) -> PedqModels:
    """The exported models in ``folder`` (kept open, one per process), which must hold ``role``."""
    require_exported(folder, role)
    if folder not in _EXPORTED_MODELS:
        _EXPORTED_MODELS[folder] = PedqModels(folder, backend="onnxruntime")
    return _EXPORTED_MODELS[folder]


def require_seg_recon(cfg: TrainConfig) -> None:
    """A seg run's maps come from ``cfg.seg_recon``: raise when it is not set (or, with
    ``seg_network_mask``, when the folder has no masking network)."""
    from ..errors import InputError

    if not cfg.seg_recon:
        raise InputError("a seg run needs seg_recon in its config: the folder of the exported models whose recon network makes the maps")
    if cfg.seg_network_mask > 0 and not (Path(cfg.seg_recon) / "mask.json").is_file():
        raise InputError(f"seg_network_mask needs a masking network (mask.json) in seg_recon ({cfg.seg_recon})")


def _box_augmented(cfg: TrainConfig) -> bool:
    return cfg.seg_box_fraction[0] != cfg.seg_box_fraction[1] or cfg.seg_box_fraction[0] != DGM_BOX_FRACTION or cfg.seg_box_shift > 0


def seg_subject(seed: int, cfg: TrainConfig, rng: np.random.Generator, *, augment: bool | None = None) -> SegSubject:
    """Subject ``seed`` drawn as :func:`prepare_subject` draws it, reconstructed by the exported
    network in ``cfg.seg_recon`` and brought to the segmentation network's grid as pedq-run does:
    on the true brain mask, or (a ``cfg.seg_network_mask`` share of heads) on the masking network's.
    ``augment`` (default: whether the config draws boxes) keeps the scan-grid arrays for crops."""
    require_seg_recon(cfg)
    models = exported_models(cfg.seg_recon, "recon")
    # the masking network's mask, for a seg_network_mask share of heads, for unwrapping, V-SHARP and all that follows
    s = prepare_subject(seed, cfg, rng, network_mask=(cfg.seg_network_mask, cfg.seg_recon))
    local, eroded = s.local_field, s.params["loss_mask"]
    chi = models.reconstruct(local, eroded, s.voxel_size, s.b0_direction)
    labels = np.where(eroded, s.labels, 0).astype(np.uint8)
    augment = _box_augmented(cfg) if augment is None else augment
    scan = (chi, eroded, labels, tuple(s.voxel_size))
    return SegSubject(*_seg_view(scan, cfg), seed, scan if augment else None, s.params["network_mask"])


def _seg_view(scan: tuple, cfg: TrainConfig, fraction=DGM_BOX_FRACTION, shift=0.0):
    """(chi, mask, labels) on the network's grid in the deep grey matter box of ``scan`` (chi, the
    eroded mask, the labels, the voxel size on the scan's grid), cut and resampled by the runtime's
    own :func:`seg_grid`; the labels nearest-neighbour."""
    chi, mask, labels, voxel_size = scan
    target = (cfg.frame_voxel,) * 3
    box, x, roi = seg_grid(chi, mask, voxel_size, target, fraction, shift)
    return x, roi, resample_to(labels[box], voxel_size, target, order=0).astype(np.uint8)


def _drawn_box(s: SegSubject, crop_rng, cfg: TrainConfig):
    """:func:`_seg_view` of a box drawn as ``cfg.seg_box_*`` say."""
    return _seg_view(s.scan, cfg, crop_rng.uniform(*cfg.seg_box_fraction, size=3), crop_rng.uniform(-1, 1, size=3) * cfg.seg_box_shift)


def _seg_sample_from(s: SegSubject, crop_rng, cfg: TrainConfig, foreground_fraction: float) -> Sample:
    """A ``seg_region`` crop centred on a labelled voxel (with probability ``foreground_fraction``)
    or on a voxel of the mask; zero-padded where the box is smaller than the crop: the box centred
    in the crop, or, when the subject keeps its scan (``seg_box_*``), a box drawn for this crop and
    placed at random in it."""
    size = tuple(int(n) for n in cfg.seg_region)
    chi, roi, labels = (s.chi, s.mask, s.labels) if s.scan is None else _drawn_box(s, crop_rng, cfg)
    pool = labels > 0 if crop_rng.random() < foreground_fraction and labels.any() else roi
    idx = np.flatnonzero(pool)
    centre = np.unravel_index(idx[crop_rng.integers(idx.size)], pool.shape)
    small = (lambda m, n: int(crop_rng.integers(m - n, 1))) if s.scan is not None else (lambda m, n: (m - n) // 2)
    origin = tuple(min(max(int(c) - n // 2, 0), m - n) if m >= n else small(m, n) for c, n, m in zip(centre, size, pool.shape))
    take = lambda a, dtype: crop_array(a, origin, size, dtype)  # noqa: E731
    zeros = np.zeros(size, np.float32)
    mask = take(roi, np.float32)
    return Sample(
        take(chi, np.float32), mask, zeros, zeros, take(labels, np.uint8), zeros, zeros, np.array([0.0, 0.0, 1.0], np.float32), 0.0
    )


def _sample_from(s, crop_rng, cfg: TrainConfig, brain_fraction: float, foreground_fraction: float = 0.0) -> Sample:
    # crop the preprocessed arrays together (random_crop copies the subject's arrays)
    c = random_crop(s, cfg.patch, crop_rng, brain_fraction=brain_fraction, foreground_fraction=foreground_fraction)
    o = c.origin

    loss_mask = crop_array(s.params["loss_mask"], o, cfg.patch, np.float32)
    mag = crop_array(s.params["magnitude_norm"], o, cfg.patch, np.float32)
    return Sample(
        c.local_field,
        loss_mask,
        np.clip(mag, 0, 1),
        c.chi,
        c.labels,
        mag,
        c.brain_mask.astype(np.float32),
        np.asarray(s.b0_direction, np.float32),
        phase_per_ppm(s.echo_time, s.field_strength),
    )


def _subject_for(cfg: TrainConfig, index: int, frame: bool | str):
    """Subject ``index`` of a stream: its seed and its RNG depend on the index alone (so any process
    can make it). ``frame``: True for the B0-aligned frame, ``"seg"`` for a :class:`SegSubject`."""
    lo, hi = cfg.train_seeds
    seed = lo + (cfg.seed * 7919 + index) % (hi - lo)
    rng = np.random.default_rng([cfg.seed, index])
    if frame == "seg":
        return seg_subject(seed, cfg, rng)
    return prepare_subject(seed, cfg, rng, frame=frame, magnitude_only=frame is False)


def draw_sample(s, crop_rng, cfg: TrainConfig, brain_fraction: float, foreground_fraction: float = 0.0) -> Sample:
    """One crop of a prepared subject (a phantom subject, or a :class:`SegSubject`)."""
    if isinstance(s, SegSubject):
        return _seg_sample_from(s, crop_rng, cfg, foreground_fraction)
    return _sample_from(s, crop_rng, cfg, brain_fraction, foreground_fraction)


def _worker_init() -> None:
    # one core per worker: the pool, not the kernels, provides the parallelism
    import os
    import sys

    import numba

    if sys.platform.startswith("linux"):  # die with the training process, even when it is killed outright
        import ctypes
        import signal

        try:
            ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
            pass

    os.environ["PEDQ_THREADS"] = "1"  # scipy.fft (physics.fft_workers)
    numba.set_num_threads(1)


class PhantomStream:
    """Batches of crops; ``state()`` / ``restore()`` make it resumable.

    ``workers`` > 0 prepares the next subjects in that many worker processes (spawned, so no
    thread or CUDA state is inherited) while the current one is cropped: a GPU step is far shorter
    than one subject's simulation and preprocessing. The batches are the same with or without
    workers, because a subject depends on its index alone. Call ``close()`` when done.

    """

    def __init__(
        self,
        cfg: TrainConfig,
        brain_fraction: float = 0.9,
        *,
        frame: bool | str = False,
        foreground_fraction: float = 0.0,
        workers: int = 0,
    ):
        self.cfg = cfg
        self.foreground_fraction = foreground_fraction
        self.frame = frame
        self.brain_fraction = brain_fraction
        self.subject_index = 0
        self.crop_index = 0
        self._current = None  # (subject, crop generator) being cropped
        self.workers = int(workers)
        self._pool = None
        self._pending: dict = {}  # subject index -> future

    def state(self) -> dict:
        return {"subject_index": self.subject_index, "crop_index": self.crop_index}

    def restore(self, state: dict) -> None:
        self.subject_index = int(state["subject_index"])
        self.crop_index = int(state["crop_index"])
        self._current = None
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()

    def _prefetch(self) -> None:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)
        # keep every worker busy and one more subject queued per worker
        ahead = 2 * self.workers + 1
        for index in range(self.subject_index, self.subject_index + ahead):
            if index not in self._pending:
                self._pending[index] = self._pool.submit(_subject_for, self.cfg, index, self.frame)

    def _load(self, index: int):
        """Subject ``index`` and its crop generator, advanced past the ``crop_index`` crops already drawn."""
        if self.workers > 0:
            self._prefetch()
            subject = self._pending.pop(index).result()
            self._prefetch()
        else:
            subject = _subject_for(self.cfg, index, self.frame)
        rng = np.random.default_rng([self.cfg.seed, index, 1])
        for _ in range(self.crop_index):  # replay crops already used (resume mid-subject)
            draw_sample(subject, rng, self.cfg, self.brain_fraction, self.foreground_fraction)
        return subject, rng

    def next_sample(self) -> Sample:
        """The next crop, one subject after another, ``crops_per_subject`` crops each."""
        if self._current is None:
            self._current = self._load(self.subject_index)
        subject, rng = self._current
        sample = draw_sample(subject, rng, self.cfg, self.brain_fraction, self.foreground_fraction)
        self.crop_index += 1
        if self.crop_index >= self.cfg.crops_per_subject:
            self.subject_index += 1
            self.crop_index = 0
            self._current = None
        return sample

    def next_batch(self) -> list[Sample]:
        return [self.next_sample() for _ in range(self.cfg.batch_size)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
