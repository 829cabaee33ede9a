"""Training data drawn on the fly from the phantom, reproducibly.

Subject ``i`` of a stream is drawn with seed ``train_seeds[0] + (base_seed * 7919 + i) mod span``
and preprocessed as the runtime would (the config's `unwrap`, Laplacian by default; V-SHARP inside the true brain mask),
so the networks learn from the local fields they will be given, errors and noise included.
For the reconstruction and segmentation networks the preprocessed subject is then resampled into
the B0-aligned frame (:class:`pedq_deploy.frame.B0Frame`), exactly as the runtime does: the network
always sees B0 along its z axis on an isotropic grid, whatever the head's tilt.
Crops of one subject come from an RNG seeded by the subject index: the stream's whole state is
two counters, saved in checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..frame import B0Frame, mask_box
from ..phantom import make_subject, random_crop
from ..phantom.crops import crop_array
from ..physics import phase_per_ppm, phase_to_ppm
from ..preprocess import normalise_magnitude, unwrap_phase, vsharp
from .config import TrainConfig

__all__ = ["Sample", "PhantomStream", "prepare_subject", "subject_local_field"]


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
    target_ppm: np.ndarray  # the field L_model compares with: field_ppm itself, or a repeat scan's (model_target)


def to_b0_frame(s, frame_voxel: float):
    """The preprocessed subject resampled into its B0-aligned frame (the brain's box plus a margin)."""
    fr = B0Frame.build(s.brain_mask.shape, s.voxel_size, s.b0_direction, frame_voxel, box=mask_box(s.brain_mask, s.voxel_size))
    soft = lambda a: fr.to_frame(a.astype(np.float32))  # noqa: E731
    params = dict(s.params, loss_mask=soft(s.params["loss_mask"]) > 0.5, magnitude_norm=soft(s.params["magnitude_norm"]),
                  frame_tilt_deg=fr.tilt_deg)
    if "target_field" in s.params:
        params["target_field"] = soft(s.params["target_field"])
    return replace(s, magnitude=soft(s.magnitude), phase=None, total_field=None, chi=soft(s.chi), local_field=soft(s.local_field),
                   brain_mask=soft(s.brain_mask) > 0.5, labels=fr.to_frame(s.labels, order=0).astype(np.uint8),
                   voxel_size=(frame_voxel,) * 3, b0_direction=np.array([0.0, 0.0, 1.0]), params=params)


def subject_local_field(s, phase=None, unwrap: str = "laplacian"):
    """(local field in ppm, V-SHARP-eroded mask) of a single-echo phantom subject (``phase``: another
    echo of it, by default its own): unwrapping with ``unwrap`` (one of ``UNWRAP_METHODS``; Laplacian by
    default, what the shipped models trained on; pedq-run's default is ``"lsq"``) and V-SHARP inside
    the true brain mask."""
    phase = s.phase if phase is None else phase
    unwrapped = unwrap_phase(phase, s.voxel_size, unwrap, mask=s.brain_mask, magnitude=s.magnitude)
    total = phase_to_ppm(unwrapped, s.echo_time, s.field_strength)
    return vsharp(total, s.brain_mask, s.voxel_size)


def prepare_subject(seed: int, cfg: TrainConfig, rng: np.random.Generator, *, frame: bool = False):
    age = cfg.ages[int(rng.integers(len(cfg.ages)))]
    te = float(rng.uniform(*cfg.echo_time_range))
    snr = float(np.exp(rng.uniform(np.log(cfg.snr_range[0]), np.log(cfg.snr_range[1]))))
    repeat = cfg.model_target == "repeat"
    # a repeat scan: the same head and echo time twice, with independent noise (the phantom's echoes)
    s = make_subject(seed=seed, age=age, shape=cfg.grid, voxel_size=cfg.voxel_size, tilt_deg=float(rng.uniform(0, cfg.max_tilt_deg)),
                     echo_time=(te, te) if repeat else te, field_strength=cfg.field_strength, snr=snr)
    if repeat:
        second = s.phase[..., 1]
        s.magnitude, s.phase, s.echo_time = s.magnitude[..., 0], s.phase[..., 0], te
        s.params["echo_time"] = te
        s.params["target_field"], _ = subject_local_field(s, second, unwrap=cfg.unwrap)
    local, eroded = subject_local_field(s, unwrap=cfg.unwrap)
    mag = normalise_magnitude(s.magnitude)  # the runtime's own normalisation
    # keep the subject but with the preprocessed field and the eroded mask for the loss
    s.local_field = local
    s.params["loss_mask"] = eroded
    s.params["magnitude_norm"] = mag
    return to_b0_frame(s, cfg.frame_voxel) if frame else s


def _sample_from(s, crop_rng, cfg: TrainConfig, brain_fraction: float, foreground_fraction: float = 0.0) -> Sample:
    # crop the preprocessed arrays together (random_crop copies the subject's arrays)
    c = random_crop(s, cfg.patch, crop_rng, brain_fraction=brain_fraction, foreground_fraction=foreground_fraction)
    o = c.origin

    loss_mask = crop_array(s.params["loss_mask"], o, cfg.patch, np.float32)
    mag = crop_array(s.params["magnitude_norm"], o, cfg.patch, np.float32)
    target = crop_array(s.params["target_field"], o, cfg.patch, np.float32) if "target_field" in s.params else c.local_field
    return Sample(c.local_field, loss_mask, np.clip(mag, 0, 1), c.chi, c.labels, mag, c.brain_mask.astype(np.float32),
                  np.asarray(s.b0_direction, np.float32), phase_per_ppm(s.echo_time, s.field_strength), target)


def _subject_for(cfg: TrainConfig, index: int, frame: bool):
    """Subject ``index`` of a stream: its seed and its RNG depend on the index alone (so any process can make it)."""
    lo, hi = cfg.train_seeds
    seed = lo + (cfg.seed * 7919 + index) % (hi - lo)
    return prepare_subject(seed, cfg, np.random.default_rng([cfg.seed, index]), frame=frame)


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

    def __init__(self, cfg: TrainConfig, brain_fraction: float = 0.9, *, frame: bool = False, foreground_fraction: float = 0.0,
                 workers: int = 0):
        self.cfg = cfg
        self.foreground_fraction = foreground_fraction
        self.frame = frame
        self.brain_fraction = brain_fraction
        self.subject_index = 0
        self.crop_index = 0
        self._subject = None
        self._crop_rng = None
        self.workers = int(workers)
        self._pool = None
        self._pending: dict = {}  # subject index -> future

    def state(self) -> dict:
        return {"subject_index": self.subject_index, "crop_index": self.crop_index}

    def restore(self, state: dict) -> None:
        self.subject_index = int(state["subject_index"])
        self.crop_index = int(state["crop_index"])
        self._subject = None
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()

    def _prefetch(self) -> None:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)
        # keep every worker busy and one more subject queued per worker
        for index in range(self.subject_index, self.subject_index + 2 * self.workers + 1):
            if index not in self._pending:
                self._pending[index] = self._pool.submit(_subject_for, self.cfg, index, self.frame)

    def _load_subject(self):
        if self.workers > 0:
            self._prefetch()
            self._subject = self._pending.pop(self.subject_index).result()
            self._prefetch()
        else:
            self._subject = _subject_for(self.cfg, self.subject_index, self.frame)
        self._crop_rng = np.random.default_rng([self.cfg.seed, self.subject_index, 1])
        for _ in range(self.crop_index):  # replay crops already used (resume mid-subject)
            _sample_from(self._subject, self._crop_rng, self.cfg, self.brain_fraction, self.foreground_fraction)

    def next_sample(self) -> Sample:
        if self._subject is None:
            self._load_subject()
        sample = _sample_from(self._subject, self._crop_rng, self.cfg, self.brain_fraction, self.foreground_fraction)
        self.crop_index += 1
        if self.crop_index >= self.cfg.crops_per_subject:
            self.subject_index += 1
            self.crop_index = 0
            self._subject = None
        return sample

    def next_batch(self) -> list[Sample]:
        return [self.next_sample() for _ in range(self.cfg.batch_size)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
