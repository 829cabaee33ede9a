"""PedQ pipeline: magnitude + phase -> mask -> unwrapped phase -> local field -> chi.

Three layers, as in nnU-Net: :func:`run_case` works on arrays, :func:`run_case_files` loads the
inputs (NIfTI + BIDS sidecars), runs the case and writes every output through a staged folder so
that OUTDIR never holds a partial result.
"""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import InputError
from ..metrics import FS_DGM_NAMES
from ..physics import b0_direction_from_affine, check_direction, phase_per_ppm, phase_to_ppm
from ..postprocess.segqc import segmentation_checks
from .networks import MASK_THRESHOLD, check_threshold

__all__ = ["PipelineConfig", "PipelineResult", "run_case", "run_case_files", "STAGES"]

STAGES = ("mask", "unwrap", "background", "inversion", "segmentation", "refine", "qc")
INVERSIONS = ("tkd", "tv", "pedq")
MASKERS = ("auto", "classic", "network")
UNWRAPPERS = ("laplacian", "lsq", "quality")  # preprocess.UNWRAP_METHODS (not imported here: it loads Numba)
REFINE_WEIGHT = 0.003  # pedq-run --refine-weight's default (written out in cli/run.py, which must not load Numba to show --help)
REFINE_LAMBDA = 3e-4  # pedq-run --refine-lambda's default (likewise); all five chosen together on validation heads (bench_refine_pipeline.py)
REFINE_EDGE_WEIGHT = 0.0  # pedq-run --refine-edge-weight's default (likewise)
REFINE_EDGE_BAND = 3  # pedq-run --refine-edge-band's default (likewise)
REFINE_EDGE_MODE = "across"  # pedq-run --refine-edge-mode's default (likewise)
REFINE_EDGE_MODES = ("voxels", "across")


@dataclass
class PipelineConfig:
    """Parameters of one run. Times in seconds, field strength in tesla, lengths in mm."""

    echo_time: float | tuple[float, ...]  # seconds; one per echo for a multi-echo scan
    field_strength: float
    b0_direction: tuple[float, float, float] | None = None  # voxel frame; None: from the affine
    unwrap: str = "lsq"  # least squares: as good as Laplacian at short TE, far better at long TE (benchmarks/RESULTS.md)
    inversion: str = "tkd"
    vsharp_radii: tuple[float, ...] | None = None
    vsharp_threshold: float = 0.05
    tkd_threshold: float = 0.19
    tv_lambda: float = 3e-4
    tv_iterations: int = 60
    # > 0: PedQ-NET's map refined by TV ADMM on the local field with it as a prior of this weight
    # (tv_admm's prior_weight; TV weight refine_lambda, TV's iterations). Off by default: it trades
    # the network's map for sharper deep grey matter, noisier within it, and it inherits the
    # field's errors (benchmarks/bench_refine_pipeline.py, bench_accuracy.py --pedq)
    refine_weight: float = 0.0
    # the refinement's TV weight: plain TV's (tv_lambda) by default, as the guidance below
    # (refine_edge_weight) lowers it on the deep grey matter's edges
    refine_lambda: float = REFINE_LAMBDA
    # < 1: the refinement's TV weight times this within refine_edge_band voxels of the boundaries of
    # the segmented deep grey matter structures (the segmentation network's labels of PedQ-NET's
    # map, or the given labels): TV lets the field make those edges (inversion.structure_edge_weight).
    # 1: TV weighs the same everywhere
    refine_edge_weight: float = REFINE_EDGE_WEIGHT
    refine_edge_band: int = REFINE_EDGE_BAND
    # "voxels": every difference from a voxel in the band is weighted; "across": only the differences
    # across the boundaries (within the band along the same axis), TV keeping its weight along them
    refine_edge_mode: str = REFINE_EDGE_MODE
    masker: str = "auto"  # network when a mask model is loaded, else classic
    mask_mirror: bool = False  # the masking network also on the left-right mirror image (test-time mirroring)
    mask_threshold: float = MASK_THRESHOLD  # the masking network's brain probability above which a voxel is brain

    @property
    def echo_times(self) -> tuple[float, ...]:
        return tuple(float(t) for t in np.atleast_1d(self.echo_time))

    def validate(self) -> None:
        for te in self.echo_times:
            if not np.isfinite(te) or te <= 0:
                raise InputError(f"echo time must be positive (seconds), got {te}")
            if te > 1.0:
                raise InputError(f"echo time {te} s is implausible: give it in seconds")
        if not self.echo_times:
            raise InputError("no echo time given")
        if not np.isfinite(self.field_strength) or self.field_strength <= 0:
            raise InputError(f"field strength must be positive (tesla), got {self.field_strength}")
        if self.inversion not in INVERSIONS:
            raise InputError(f"unknown inversion {self.inversion!r} ({', '.join(INVERSIONS)})")
        check_threshold(self.mask_threshold)
        if self.masker not in MASKERS:
            raise InputError(f"unknown masker {self.masker!r} ({', '.join(MASKERS)})")
        if self.unwrap not in UNWRAPPERS:
            raise InputError(f"unknown unwrapping method {self.unwrap!r} ({', '.join(UNWRAPPERS)})")
        if not (np.isfinite(self.refine_weight) and self.refine_weight >= 0):
            raise InputError(f"the refinement's prior weight must be >= 0, got {self.refine_weight}")
        if not (np.isfinite(self.refine_lambda) and self.refine_lambda > 0):
            raise InputError(f"the refinement's TV weight must be positive, got {self.refine_lambda}")
        if not (np.isfinite(self.refine_edge_weight) and 0 <= self.refine_edge_weight <= 1):
            raise InputError(f"the refinement's edge weight must lie in [0, 1], got {self.refine_edge_weight}")
        if not (isinstance(self.refine_edge_band, (int, np.integer)) and self.refine_edge_band >= 1):
            raise InputError(f"the refinement's edge band must be a whole number of voxels >= 1, got {self.refine_edge_band}")
        if self.refine_edge_mode not in REFINE_EDGE_MODES:
            raise InputError(f"unknown refinement edge mode {self.refine_edge_mode!r} ({', '.join(REFINE_EDGE_MODES)})")
        if self.refine_weight > 0 and self.inversion != "pedq":
            raise InputError(f"refinement refines PedQ-NET's map: it needs --inversion pedq (got {self.inversion})")


@dataclass
class PipelineResult:
    mask: np.ndarray
    phase_unwrapped: np.ndarray | None  # rad; None for a multi-echo scan (its echoes are combined into a field)
    local_field: np.ndarray
    qsm: np.ndarray
    info: dict = field(default_factory=dict)
    segmentation: np.ndarray | None = None  # FreeSurfer labels, when a segmentation model ran
    qc_map: np.ndarray | None = None  # data consistency |W m (exp(i k D*chi) - exp(i k y))| (postprocess.qc)


Progress = Callable[[str, str], None]  # (stage, event): ("plan", "a,b,c") first, then "start" / "done <seconds>"


def _check_arrays(magnitude: np.ndarray, phase: np.ndarray, mask: np.ndarray | None, n_echoes: int,
                  labels: np.ndarray | None = None) -> None:
    if n_echoes == 1 and magnitude.ndim != 3:
        raise InputError(f"magnitude must be 3D, got shape {magnitude.shape}")
    if n_echoes > 1 and (magnitude.ndim != 4 or magnitude.shape[3] != n_echoes):
        raise InputError(f"{n_echoes} echo times need a (X, Y, Z, {n_echoes}) magnitude, got shape {magnitude.shape}")
    if phase.shape != magnitude.shape:
        raise InputError(f"phase shape {phase.shape} differs from magnitude shape {magnitude.shape}")
    if not np.all(np.isfinite(magnitude)):
        raise InputError("magnitude contains NaN or infinite values")
    if not np.all(np.isfinite(phase)):
        raise InputError("phase contains NaN or infinite values")
    if mask is not None:
        if mask.shape != magnitude.shape[:3]:
            raise InputError(f"mask shape {mask.shape} differs from magnitude shape {magnitude.shape}")
        if not np.any(mask > 0):
            raise InputError("the given brain mask is empty")
    if labels is not None and np.shape(labels) != magnitude.shape[:3]:
        raise InputError(f"labels shape {np.shape(labels)} differs from magnitude shape {magnitude.shape}")


def _segment_network_map(models, chi_network, local, eroded, voxel_size, b0) -> np.ndarray:
    """The segmentation network's labels of the reconstruction network's map (``chi_network``; made
    here from the local field when another inversion ran)."""
    if chi_network is None:
        chi_network = models.reconstruct(local, eroded, voxel_size, b0)
    return models.segment(chi_network, eroded, voxel_size)


def run_case(
    magnitude: np.ndarray,
    phase: np.ndarray,
    affine: np.ndarray,
    voxel_size: tuple[float, float, float],
    config: PipelineConfig,
    *,
    mask: np.ndarray | None = None,
    progress: Progress | None = None,
    models=None,
    labels: np.ndarray | None = None,
) -> PipelineResult:
    """Run the pipeline on arrays. ``phase`` is in radians (see ``detect_and_scale_phase``).

    A multi-echo scan comes as (X, Y, Z, echoes) magnitude and phase with one echo time each in
    ``config.echo_time``: the echoes are combined into one field map (``combine_echoes``: the
    first echo unwrapped in space, the others in time, a weighted fit over TE); masking uses the
    first echo.

    ``models`` (a :class:`~pedq_deploy.runtime.networks.PedqModels`) is needed for
    ``inversion="pedq"`` and ``masker="network"``; with it, a segmentation model (if present)
    labels the deep grey matter. ``labels`` (FreeSurfer numbers on the input grid, e.g. a
    registered atlas) take the place of the segmentation network: the regions are theirs. A
    refinement guided by structure (``refine_edge_weight < 1``) needs one of the two.

    Returns the brain mask, the unwrapped phase (rad), the local field (ppm) and chi (ppm,
    referenced to the mean over the V-SHARP-eroded mask), all on the input grid.
    """
    from ..inversion import structure_edge_weight, tkd, tv_admm
    from ..postprocess import QC_THRESHOLDS, consistency
    from ..preprocess import classic_mask, combine_echoes, unwrap_phase, vsharp

    config.validate()
    tes = config.echo_times
    _check_arrays(magnitude, phase, mask, len(tes), labels)
    first = magnitude[..., 0] if len(tes) > 1 else magnitude
    b0 = check_direction(config.b0_direction) if config.b0_direction is not None else b0_direction_from_affine(affine)
    timings: dict[str, float] = {}
    notify = progress or (lambda stage, event: None)

    def stage(name: str, fn, *args, **kwargs):
        notify(name, "start")
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        timings[name] = time.perf_counter() - t0
        notify(name, f"done {timings[name]:.2f}")
        return out

    if config.inversion == "pedq" and models is None:
        raise InputError("--inversion pedq needs the PedQ-NET models (none found: give --models DIR)")
    with_seg = labels is not None or (models is not None and models.has("seg"))
    if config.refine_weight > 0 and config.refine_edge_weight < 1 and not with_seg:
        raise InputError("--refine is guided by the deep grey matter's boundaries: it needs a segmentation model (seg.json) or --labels "
                         "(or --refine-edge-weight 1 for no guidance)")
    skip = {"refine"} if config.refine_weight == 0 else set()
    skip |= set() if with_seg else {"segmentation"}
    notify("plan", ",".join(s for s in STAGES if s not in skip))
    use_network_mask = config.masker == "network" or (config.masker == "auto" and models is not None and models.has("mask"))
    if mask is None and use_network_mask:
        if models is None or not models.has("mask"):
            raise InputError("--masker network needs a mask model (mask.json) in the models folder")
        # mirrored along the head's left-right axis (the voxel axis nearest the world x axis) as well
        lr_axis = int(np.argmax(np.abs(np.asarray(affine, float)[0, :3])))
        brain = stage("mask", models.mask, first, voxel_size, mirror_axis=lr_axis if config.mask_mirror else None,
                      threshold=config.mask_threshold)
        mask_source = "network"
    elif mask is None:
        brain = stage("mask", classic_mask, first, voxel_size)
        mask_source = "classic"
    else:
        brain = stage("mask", lambda m: np.asarray(m) > 0, mask)
        mask_source = "given"
    sensitivity = None
    if len(tes) > 1:
        total_field, sensitivity, single = stage("unwrap", combine_echoes, phase, magnitude, tes, config.field_strength, voxel_size, mask=brain)
        unwrapped = None
    else:
        unwrapped = stage("unwrap", unwrap_phase, phase, voxel_size, config.unwrap, mask=brain, magnitude=magnitude)
        total_field = phase_to_ppm(unwrapped, tes[0], config.field_strength)
    local, eroded = stage(
        "background", vsharp, total_field, brain, voxel_size, config.vsharp_radii, config.vsharp_threshold
    )
    if config.inversion == "tkd":
        chi = stage("inversion", tkd, local, eroded, voxel_size, b0, config.tkd_threshold)
    elif config.inversion == "tv":
        chi = stage("inversion", tv_admm, local, eroded, voxel_size, b0, config.tv_lambda, None, config.tv_iterations)
    else:
        chi = stage("inversion", models.reconstruct, local, eroded, voxel_size, b0)
    chi_network = chi if config.inversion == "pedq" else None  # what the segmentation network was trained on
    segmentation = None
    if labels is not None:  # where chi has values (the eroded mask), as the network's labels
        segmentation = stage("segmentation", np.where, eroded, labels, 0)
    elif with_seg:  # after TKD or TV too, the network segments the reconstruction network's map, which it learnt on
        segmentation = stage("segmentation", _segment_network_map, models, chi_network, local, eroded, voxel_size, b0)
    if config.refine_weight > 0:
        edge_weight = None
        if config.refine_edge_weight < 1:
            edge_weight = structure_edge_weight(segmentation, config.refine_edge_weight, config.refine_edge_band,
                                                across=config.refine_edge_mode == "across")
        chi = stage("refine", tv_admm, local, eroded, voxel_size, b0, config.refine_lambda, None, config.tv_iterations,
                    prior=chi, prior_weight=config.refine_weight, tv_weight=edge_weight)
    coverage = float(eroded.sum() / max(int(brain.sum()), 1))
    te_qc = float(np.mean(tes))  # the map's radians are those of the mean echo time
    qc_map, qc = stage("qc", consistency, chi, local, eroded, voxel_size, b0, phase_per_ppm(te_qc, config.field_strength), first,
                       sensitivity=sensitivity, coverage=coverage)
    qc["echo_time_s"] = te_qc
    if len(tes) > 1:
        qc["single_echo_fraction"] = float(single[brain].mean())
        if qc["single_echo_fraction"] > QC_THRESHOLDS["single_echo_fraction"]:
            qc["flags"].append(f"phase not linear in TE over {qc['single_echo_fraction']:.0%} of the brain (first echo used there): "
                               "echo times wrong, or motion between echoes")
    seg_qc = None
    if segmentation is not None:  # anatomy's plausibility checks, structure by structure (postprocess.segqc)
        seg_qc = {FS_DGM_NAMES[k]: f for k, f in segmentation_checks(segmentation, brain, affine, FS_DGM_NAMES).items()}
        bad = [f"{name} ({', '.join(f)})" for name, f in seg_qc.items() if f]
        if bad:
            qc["flags"].append(f"segmentation implausible for {len(bad)} of {len(seg_qc)} structures, their regions are unreliable: "
                               + "; ".join(bad))
    info = {
        "b0_direction_voxel_frame": [round(float(x), 6) for x in b0],
        "b0_direction_source": "given" if config.b0_direction is not None else "affine",
        "mask_source": mask_source,
        "brain_voxels": int(brain.sum()),
        "coverage": coverage,
        "echoes": len(tes),
        "chi_reference": "mean over the V-SHARP-eroded brain mask",
        **({"segmentation_source": "labels file" if labels is not None else "network"} if with_seg else {}),
        **({"segmentation_qc": seg_qc} if seg_qc is not None else {}),
        "qc": qc,
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
    }
    return PipelineResult(brain, unwrapped, local, chi, info, segmentation, qc_map)


def _versions() -> dict[str, str]:
    import nibabel
    import numba
    import scipy

    return {
        "pedq_deploy": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "nibabel": nibabel.__version__,
    }


def _write_dicom(folder, fmt: str, result, props, dicom: dict) -> dict:
    """QSM (MR images or a Parametric Map) and, with a segmentation, a DICOM SEG into ``folder`` (staged)."""
    from ..io import StagedOutput
    from ..io.dicom import write_mr_series, write_parametric_map, write_seg

    src = (dicom.get("M") or dicom.get("P"))
    source = src.datasets if src is not None else None
    with StagedOutput(folder) as out:
        if fmt == "parametric-map":
            files = [write_parametric_map(out.folder(), result.qsm, source)]
        else:
            files = write_mr_series(out.folder(), result.qsm, props.affine, source=source)
        if result.segmentation is not None and source:
            files.append(write_seg(out.folder(), result.segmentation, source, FS_DGM_NAMES))
        for f in files:
            out.adopt(f)
    return {"folder": str(Path(folder).resolve()), "format": fmt, "files": len(files)}


def resolve_acquisition(magnitude_path: str, phase_path: str, echo_time: float | None, field_strength: float | None) -> tuple[float, float, str]:
    """Echo time and field strength from the arguments, else from the BIDS sidecars."""
    from ..io.sidecar import echo_time_from_sidecar, field_strength_from_sidecar, read_sidecar

    source = "arguments"
    if echo_time is None or field_strength is None:
        # read (and check) both sidecars: a value in ms in either is an error, and so is a disagreement
        metas = [read_sidecar(phase_path), read_sidecar(magnitude_path)]
        tes = [te for te in (echo_time_from_sidecar(m) for m in metas) if te is not None]
        b0s = [b for b in (field_strength_from_sidecar(m) for m in metas) if b is not None]
        for name, values in (("EchoTime", tes), ("MagneticFieldStrength", b0s)):
            if len(values) == 2 and abs(values[0] - values[1]) > 1e-3 * max(abs(values[0]), 1e-12):
                raise InputError(f"{name} differs between the phase and magnitude sidecars ({values[0]} vs {values[1]})")
        if echo_time is None and tes:
            echo_time = tes[0]
        if field_strength is None and b0s:
            field_strength = b0s[0]
        source = "arguments and BIDS sidecars"
    if echo_time is None:
        raise InputError("echo time unknown: give --echo-time (seconds) or an EchoTime in a JSON sidecar")
    if field_strength is None:
        raise InputError("field strength unknown: give --field-strength (tesla) or MagneticFieldStrength in a JSON sidecar")
    return float(echo_time), float(field_strength), source


def acquisition_of(magnitude_path: str, phase_path: str | None, dicom: dict, echo_time: float | None,
                   field_strength: float | None) -> tuple[float, float, str]:
    """Echo time and field strength: the arguments, else the DICOM headers of DICOM inputs, else the
    BIDS sidecars of NIfTI inputs. ``dicom`` is what :func:`load_inputs` returned."""
    if not dicom:
        return resolve_acquisition(magnitude_path, phase_path, echo_time, field_strength)
    te = echo_time if echo_time is not None else next((d.echo_time for d in dicom.values() if d.echo_time), None)
    b0 = field_strength if field_strength is not None else next((d.field_strength for d in dicom.values() if d.field_strength), None)
    if (te is None or b0 is None) and len(dicom) < 2:  # the NIfTI partner may have a sidecar
        nifti = magnitude_path if "M" not in dicom else phase_path
        te, b0, _ = resolve_acquisition(nifti, nifti, te, b0)
    src = dicom.get("P") or dicom.get("M")
    if te is None:
        raise InputError(f"echo time unknown: the DICOM headers of {src.props.path} give no EchoTime; give --echo-time (seconds)")
    if b0 is None:
        raise InputError("field strength unknown: no MagneticFieldStrength in the DICOM headers; give --field-strength (tesla)")
    return float(te), float(b0), "arguments and DICOM headers"


def load_inputs(magnitude_path: str, phase_path: str | None, mask_path: str | None = None):
    """Load magnitude, phase (rescaled to radians) and an optional mask; check they share a grid.

    Either input may be a NIfTI file or a DICOM folder; with ``phase_path`` None the magnitude
    folder must hold both series (told apart by ImageType M / P). Returns the arrays, the
    magnitude's ImageProps, the phase-format note and the DICOM series (or None) of each input.
    """
    from ..io import load_image
    from ..io.dicom import is_dicom_dir, read_dicom_folder
    from ..preprocess import detect_and_scale_phase

    dicom = {}
    if phase_path is None:
        if not is_dicom_dir(magnitude_path):
            raise InputError(f"one input given ({magnitude_path}): that works for a DICOM folder holding both magnitude and phase")
        dicom = read_dicom_folder(magnitude_path)
        for kind, name in (("M", "magnitude"), ("P", "phase")):
            if kind not in dicom:
                raise InputError(f"{magnitude_path}: no {name} series (ImageType {kind}) in the folder")
    else:
        for kind, path in (("M", magnitude_path), ("P", phase_path)):
            if is_dicom_dir(path):
                dicom[kind] = read_dicom_folder(path, want=kind)[kind]
    if "M" in dicom:
        mag, mprops = dicom["M"].data, dicom["M"].props
    else:
        mag, mprops = load_image(magnitude_path, name="magnitude")
    if "P" in dicom:
        ph, pprops = dicom["P"].data, dicom["P"].props
    else:
        ph, pprops = load_image(phase_path, name="phase")
    if ph.shape != mag.shape:
        raise InputError(f"phase shape {ph.shape} differs from magnitude shape {mag.shape}")
    if not np.allclose(mprops.affine, pprops.affine, atol=1e-3):
        raise InputError("phase and magnitude affines differ: they are not on the same grid")
    if not np.all(np.isfinite(mag)):
        raise InputError("magnitude contains NaN or infinite values")
    phase_rad, phase_note = detect_and_scale_phase(ph)
    mask = _load_on_grid(mask_path, "mask", mprops) if mask_path is not None else None
    return mag, phase_rad, mask, mprops, phase_note, dicom


def _load_on_grid(path: str, name: str, props) -> np.ndarray:
    """An image that must share the magnitude's grid (a mask, labels)."""
    from ..io import load_image

    data, dprops = load_image(path, name=name)
    if data.shape != tuple(props.shape) or not np.allclose(dprops.affine, props.affine, atol=1e-3):
        raise InputError(f"{name} {'is' if name == 'mask' else 'are'} not on the magnitude's grid (shape or affine differ)")
    return data


def load_labels(labels_path: str, props) -> np.ndarray:
    """A label image (whole non-negative numbers, FreeSurfer's for the deep grey matter) on the magnitude's grid."""
    lab = _load_on_grid(labels_path, "labels", props)
    if not np.all(np.isfinite(lab)) or np.any(lab < 0) or not np.array_equal(lab, np.round(lab)) or lab.max() > 65535:
        raise InputError(f"{labels_path}: labels must be whole numbers from 0 to 65535 (a label image, not a probability map)")
    return lab.astype(np.uint16)


def run_case_files(
    magnitude_path: str,
    phase_path: str,
    outdir: str,
    config_overrides: dict,
    *,
    echo_time: float | None = None,
    field_strength: float | None = None,
    mask_path: str | None = None,
    labels_path: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    models_dir: str | None = None,
    backend: str = "auto",
    dicom_out: str | None = None,
    dicom_format: str = "mr",
) -> dict:
    """Load, run and write one case; returns the provenance dict that is also written.

    ``config_overrides["inversion"] == "auto"`` picks ``pedq`` when models are found (the
    argument, $PEDQ_MODELS, or the models shipped in the package), else ``tkd``.
    """
    from ..io import StagedOutput, save_image, sha256_file
    from ..io.quicklook import quicklook
    from .networks import PedqModels, find_models

    log = log or (lambda msg: None)
    config_overrides = dict(config_overrides)
    found = find_models(models_dir)
    wants_models = config_overrides.get("inversion") in ("auto", "pedq") or config_overrides.get("masker") in ("auto", "network")
    models = PedqModels(found, backend=backend) if (found is not None and wants_models) else None
    if config_overrides.get("inversion", "auto") == "auto":
        config_overrides["inversion"] = "pedq" if models is not None else "tkd"
        log(f"inversion: {config_overrides['inversion']} ({'models in ' + str(found) if models is not None else 'no PedQ-NET models found'})")
    if dicom_format not in ("mr", "parametric-map"):
        raise InputError(f"unknown DICOM output format {dicom_format!r} (mr, parametric-map)")
    t0 = time.perf_counter()
    from ..io.dicom import is_dicom_dir

    if phase_path is None or is_dicom_dir(magnitude_path) or is_dicom_dir(phase_path):
        mag, phase_rad, mask, props, phase_note, dicom = load_inputs(magnitude_path, phase_path, mask_path)
        te, b0, acq_source = acquisition_of(magnitude_path, phase_path, dicom, echo_time, field_strength)
    else:
        te, b0, acq_source = resolve_acquisition(magnitude_path, phase_path, echo_time, field_strength)
        dicom = {}
    config = PipelineConfig(echo_time=te, field_strength=b0, **config_overrides)
    config.validate()
    if not dicom:
        mag, phase_rad, mask, props, phase_note, dicom = load_inputs(magnitude_path, phase_path, mask_path)
    log(phase_note)
    labels = load_labels(labels_path, props) if labels_path is not None else None
    if dicom_format == "parametric-map" and dicom_out and "M" not in dicom and "P" not in dicom:
        raise InputError("--dicom-format parametric-map needs DICOM input (it references the source images)")
    t_load = time.perf_counter() - t0
    used = None
    try:
        result = run_case(mag, phase_rad, props.affine, props.voxel_size, config, mask=mask, progress=progress, models=models, labels=labels)
    finally:
        if models is not None:
            used = models.backends_used()
            models.close()
    t1 = time.perf_counter()
    from ..io.dicom import dicom_dir_sha256

    digest = lambda p: dicom_dir_sha256(p) if Path(p).is_dir() else sha256_file(p)  # noqa: E731
    provenance = {
        "tool": "pedq-run",
        "versions": _versions(),
        "inputs": {
            "magnitude": {"path": str(Path(magnitude_path).resolve()), "sha256": digest(magnitude_path)},
            "phase": {"path": str(Path(phase_path or magnitude_path).resolve()), "sha256": digest(phase_path or magnitude_path)},
            **({"mask": {"path": str(Path(mask_path).resolve())}} if mask_path else {}),
            **({"labels": {"path": str(Path(labels_path).resolve()), "sha256": sha256_file(labels_path)}} if labels_path else {}),
        },
        "acquisition": {"echo_time_s": te, "field_strength_t": b0, "source": acq_source, "phase_format": phase_note},
        "grid": {"shape": list(props.shape), "voxel_size_mm": [round(v, 6) for v in props.voxel_size]},
        "parameters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "units": {"phase_unwrapped": "rad", "local_field": "ppm", "qsm": "ppm"},
        "models": {r: {"manifest": str(m.path), "sha256": m.sha256} for r, m in models.manifests.items()} if models else None,
        "backend": backend if models else None,
        "backend_used": used or None,  # per network, auto resolved
        **result.info,
    }
    with StagedOutput(outdir) as out:
        save_image(out.path("mask.nii.gz"), result.mask, props.affine, dtype=np.uint8)
        save_image(out.path("phase_unwrapped.nii.gz"), result.phase_unwrapped, props.affine)
        save_image(out.path("local_field.nii.gz"), result.local_field, props.affine)
        save_image(out.path("qsm.nii.gz"), result.qsm, props.affine)
        save_image(out.path("consistency.nii.gz"), result.qc_map, props.affine)
        if result.segmentation is not None:
            from ..metrics import region_stats

            seg_dtype = np.uint8 if int(result.segmentation.max(initial=0)) <= 255 else np.uint16
            save_image(out.path("segmentation.nii.gz"), result.segmentation, props.affine, dtype=seg_dtype)
            rows = region_stats(result.qsm, result.segmentation, float(np.prod(props.voxel_size)) / 1000.0,
                                checks=result.info.get("segmentation_qc", {}))
            lines = ["label,name,voxels,volume_ml,mean_ppm,std_ppm,qc"] + [
                f"{r['label']},{r['name']},{r['voxels']},{r['volume_ml']:.4f},{r['mean_ppm']:.6f},{r['std_ppm']:.6f},{r['qc']}" for r in rows]
            out.path("regions.csv").write_text("\n".join(lines) + "\n")
        quicklook(out.path("quicklook.png"), mag, result.mask, result.qsm, result.segmentation)
        if dicom_out:
            provenance["dicom_out"] = _write_dicom(dicom_out, dicom_format, result, props, dicom)
        provenance["timings_s"]["load"] = round(t_load, 4)
        provenance["timings_s"]["write"] = round(time.perf_counter() - t1, 4)
        provenance["timings_s"]["total"] = round(time.perf_counter() - t0, 4)
        # provenance.json is renamed into OUTDIR last: its presence marks a complete result
        out.path("provenance.json").write_text(json.dumps(provenance, indent=2))
    return provenance
