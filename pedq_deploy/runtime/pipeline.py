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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import PipelineConfig, resolve_inversion, resolve_refine
from ..errors import InputError
from ..metrics import FS_DGM_NAMES
from ..physics import b0_direction_from_affine, check_direction, phase_per_ppm, phase_to_ppm
from ..postprocess.segqc import segmentation_checks

__all__ = ["PipelineConfig", "PipelineResult", "run_case", "run_case_files", "STAGES"]

STAGES = ("mask", "unwrap", "background", "inversion", "segmentation", "refine", "qc")


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


def _check_arrays(
    magnitude: np.ndarray, phase: np.ndarray, mask: np.ndarray | None, n_echoes: int, labels: np.ndarray | None = None
) -> None:
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


def _atlas_segmentation(brain, eroded, affine) -> np.ndarray:
    """The atlas's nuclei registered to the brain mask, where chi has values."""
    from ..postprocess.atlas import atlas_labels

    return np.where(eroded, atlas_labels(brain, affine), 0).astype(np.uint8)


def _atlas_name() -> str:
    from ..postprocess.atlas import ATLAS_NAME

    return ATLAS_NAME


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
    from ..preprocess import classic_mask, combine_echoes, lbv, unwrap_phase, vsharp

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

    inversion = resolve_inversion(config.inversion, models)
    if inversion == "pedq" and (models is None or not models.has("recon")):
        raise InputError("inversion pedq needs the PedQ-NET models (none found: give --models DIR)")
    if config.refine is True and inversion != "pedq":
        raise InputError(f"the refinement refines PedQ-NET's map: it needs inversion pedq (got {inversion})")
    use_atlas = labels is None and config.segmenter == "atlas"
    with_seg = labels is not None or use_atlas or (models is not None and models.has("seg"))
    refine = resolve_refine(config.refine, inversion, with_seg or config.refine_edge_weight >= 1)
    if refine and config.refine_edge_weight < 1 and not with_seg:
        raise InputError(
            "the refinement is guided by the deep grey matter's boundaries: it needs a segmentation model (seg.json) or "
            "--labels (or refine_edge_weight = 1 for no guidance)"
        )
    skip = set() if refine else {"refine"}
    skip |= set() if with_seg else {"segmentation"}
    notify("plan", ",".join(s for s in STAGES if s not in skip))
    mask_notes: list[str] = []  # the classic masker says when its mask is doubtful
    use_network_mask = config.masker == "network" or (config.masker == "auto" and models is not None and models.has("mask"))
    if mask is None and use_network_mask:
        if models is None or not models.has("mask"):
            raise InputError("masker network needs a mask model (mask.json) in the models folder")
        brain = stage("mask", models.mask, first, voxel_size, threshold=config.mask_threshold, closing_mm=config.mask_closing)
        mask_source = "network"
    elif mask is None:
        brain = stage("mask", classic_mask, first, voxel_size, notes=mask_notes)
        mask_source = "classic"
    else:
        brain = stage("mask", lambda m: np.asarray(m) > 0, mask)
        mask_source = "given"
    sensitivity = None
    if len(tes) > 1:
        total_field, sensitivity, single = stage(
            "unwrap", combine_echoes, phase, magnitude, tes, config.field_strength, voxel_size, mask=brain
        )
        unwrapped = None
    else:
        unwrapped = stage("unwrap", unwrap_phase, phase, voxel_size, config.unwrap, mask=brain, magnitude=magnitude)
        total_field = phase_to_ppm(unwrapped, tes[0], config.field_strength)
    if config.background == "lbv":
        local, eroded = stage("background", lbv, total_field, brain, voxel_size)
    else:
        local, eroded = stage("background", vsharp, total_field, brain, voxel_size, config.vsharp_radii, config.vsharp_threshold)
    # TV's region and where its data term lies: the whole brain from the eroded mask's field, or the eroded mask alone
    tv_region, tv_data = (brain, eroded) if config.fill_rim else (eroded, None)
    if inversion == "tkd":
        chi = stage("inversion", tkd, local, eroded, voxel_size, b0, config.tkd_threshold)
    elif inversion == "tv":
        chi = stage("inversion", tv_admm, local, tv_region, voxel_size, b0, config.tv_lambda, None, config.tv_iterations, data_mask=tv_data)
    else:
        chi = stage("inversion", models.reconstruct, local, eroded, voxel_size, b0)
    chi_network = chi if inversion == "pedq" else None  # what the segmentation network was trained on
    segmentation = None
    if labels is not None:  # where chi has values (the eroded mask), as the network's labels
        segmentation = stage("segmentation", np.where, eroded, labels, 0)
    elif use_atlas:
        segmentation = stage("segmentation", _atlas_segmentation, brain, eroded, affine)
    elif with_seg:  # after TKD or TV too, the network segments the reconstruction network's map, which it learnt on
        segmentation = stage("segmentation", _segment_network_map, models, chi_network, local, eroded, voxel_size, b0)
    if refine:
        edge_weight = None
        if config.refine_edge_weight < 1:
            edge_weight = structure_edge_weight(segmentation, config.refine_edge_weight, config.refine_edge_band, across=True)
        chi = stage(
            "refine",
            tv_admm,
            local,
            tv_region,
            voxel_size,
            b0,
            config.refine_lambda,
            None,
            config.tv_iterations,
            prior=chi,
            prior_weight=config.refine_weight,
            tv_weight=edge_weight,
            data_mask=tv_data,
        )
    rim_filled = config.fill_rim and (refine or inversion == "tv")
    valued = brain if rim_filled else eroded  # where chi has values
    coverage = float(valued.sum() / max(int(brain.sum()), 1))
    te_qc = float(np.mean(tes))  # the map's radians are those of the mean echo time
    qc_map, qc = stage(
        "qc",
        consistency,
        chi,
        local,
        eroded,
        voxel_size,
        b0,
        phase_per_ppm(te_qc, config.field_strength),
        first,
        sensitivity=sensitivity,
        coverage=coverage,
    )
    qc["echo_time_s"] = te_qc
    qc["flags"].extend(mask_notes)
    if len(tes) > 1:
        qc["single_echo_fraction"] = float(single[brain].mean())
        if qc["single_echo_fraction"] > QC_THRESHOLDS["single_echo_fraction"]:
            qc["flags"].append(
                f"phase not linear in TE over {qc['single_echo_fraction']:.0%} of the brain (first echo used there): "
                "echo times wrong, or motion between echoes"
            )
    seg_qc = None
    if segmentation is not None:  # anatomy's plausibility checks, structure by structure (postprocess.segqc)
        seg_qc = {FS_DGM_NAMES[k]: f for k, f in segmentation_checks(segmentation, brain, affine, FS_DGM_NAMES).items()}
        bad = [f"{name} ({', '.join(f)})" for name, f in seg_qc.items() if f]
        if bad:
            qc["flags"].append(
                f"segmentation implausible for {len(bad)} of {len(seg_qc)} structures, their regions are unreliable: " + "; ".join(bad)
            )
    info = {
        "b0_direction_voxel_frame": [round(float(x), 6) for x in b0],
        "b0_direction_source": "given" if config.b0_direction is not None else "affine",
        "inversion": inversion,
        "refined": refine,
        "mask_source": mask_source,
        "brain_voxels": int(brain.sum()),
        "coverage": coverage,  # the share of this run's brain mask (mask.nii.gz) where chi has values
        "echoes": len(tes),
        "rim_filled": rim_filled,
        "chi_reference": "mean over the brain mask"
        if rim_filled
        else "mean over the brain mask where chi has values (eroded by background removal)",
        **({"segmentation_source": "labels file" if labels is not None else "atlas" if use_atlas else "network"} if with_seg else {}),
        **({"atlas": _atlas_name()} if use_atlas else {}),
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

    src = dicom.get("M") or dicom.get("P")
    source = src.datasets if src is not None else None
    with StagedOutput(folder, whole=True) as out:
        if fmt == "parametric-map":
            files = [write_parametric_map(out.folder(), result.qsm, source)]
        else:
            files = write_mr_series(out.folder(), result.qsm, props.affine, source=source)
        if result.segmentation is not None and source:
            files.append(write_seg(out.folder(), result.segmentation, source, FS_DGM_NAMES))
        for f in files:
            out.adopt(f)
    return {"folder": str(Path(folder).resolve()), "format": fmt, "files": len(files)}


def resolve_acquisition(
    magnitude_path: str, phase_path: str, echo_time: float | None, field_strength: float | None
) -> tuple[float, float, str]:
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


def acquisition_of(
    magnitude_path: str, phase_path: str | None, dicom: dict, echo_time: float | None, field_strength: float | None
) -> tuple[float, float, str]:
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
    from ..preprocess import check_not_swapped, detect_and_scale_phase

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
    check_not_swapped(mag, ph)
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
    phase_path: str | None,
    outdir: str,
    settings: dict | None = None,
    *,
    echo_time: float | None = None,
    field_strength: float | None = None,
    b0_direction: tuple[float, float, float] | None = None,
    mask_path: str | None = None,
    labels_path: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    models_dir: str | None = None,
    backend: str = "auto",
    dicom_out: str | None = None,
    dicom_format: str = "mr",
    overwrite: bool = False,
) -> dict:
    """Load, run and write one case; returns the provenance dict that is also written.

    ``settings`` are :class:`PipelineConfig`'s algorithmic fields (its defaults for the rest).
    Models come from ``models_dir``, $PEDQ_MODELS, or the ones shipped in the package. OUTDIR
    (and ``dicom_out``) must be new or empty unless ``overwrite``, which replaces it whole.
    """
    from ..io import StagedOutput, save_image, sha256_file
    from ..io.dicom import is_dicom_dir
    from ..io.outputs import check_output_folder
    from ..io.quicklook import quicklook
    from .networks import PedqModels, find_models

    log = log or (lambda msg: None)
    settings = dict(settings or {})
    if dicom_format not in ("mr", "parametric-map"):
        raise InputError(f"unknown DICOM output format {dicom_format!r} (mr, parametric-map)")
    check_output_folder(outdir, overwrite)
    if dicom_out:
        check_output_folder(dicom_out, overwrite)
    PipelineConfig(echo_time=0.01, field_strength=3.0, **settings).validate()  # bad settings fail before any loading
    found = find_models(models_dir)
    wants_models = settings.get("inversion", "auto") in ("auto", "pedq") or settings.get("masker", "auto") in ("auto", "network")
    models = PedqModels(found, backend=backend) if (found is not None and wants_models) else None
    inversion = resolve_inversion(settings.get("inversion", "auto"), models)
    if settings.get("inversion", "auto") == "auto":
        log(f"inversion: {inversion} ({'models in ' + str(found) if models is not None else 'no PedQ-NET models found'})")
    t0 = time.perf_counter()
    if phase_path is None or is_dicom_dir(magnitude_path) or is_dicom_dir(phase_path):
        mag, phase_rad, mask, props, phase_note, dicom = load_inputs(magnitude_path, phase_path, mask_path)
        te, b0, acq_source = acquisition_of(magnitude_path, phase_path, dicom, echo_time, field_strength)
    else:
        te, b0, acq_source = resolve_acquisition(magnitude_path, phase_path, echo_time, field_strength)
        dicom = {}
    config = PipelineConfig(echo_time=te, field_strength=b0, b0_direction=b0_direction, **settings)
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
        result = run_case(
            mag, phase_rad, props.affine, props.voxel_size, config, mask=mask, progress=progress, models=models, labels=labels
        )
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
        "parameters": config.parameters(),
        "units": {"phase_unwrapped": "rad", "local_field": "ppm", "qsm": "ppm"},
        "models": {r: {"manifest": str(m.path), "sha256": m.sha256} for r, m in models.manifests.items()} if models else None,
        "backend": backend if models else None,
        "backend_used": used or None,  # per network, auto resolved
        **result.info,
    }
    with StagedOutput(outdir, whole=True) as out:
        save_image(out.path("mask.nii.gz"), result.mask, props.affine, dtype=np.uint8)
        save_image(out.path("phase_unwrapped.nii.gz"), result.phase_unwrapped, props.affine)
        save_image(out.path("local_field.nii.gz"), result.local_field, props.affine)
        save_image(out.path("qsm.nii.gz"), result.qsm, props.affine)
        save_image(out.path("consistency.nii.gz"), result.qc_map, props.affine)
        if result.segmentation is not None:
            from ..metrics import region_stats

            seg_dtype = np.uint8 if int(result.segmentation.max(initial=0)) <= 255 else np.uint16
            save_image(out.path("segmentation.nii.gz"), result.segmentation, props.affine, dtype=seg_dtype)
            rows = region_stats(
                result.qsm, result.segmentation, float(np.prod(props.voxel_size)) / 1000.0, checks=result.info.get("segmentation_qc", {})
            )
            lines = ["label,name,voxels,volume_ml,mean_ppm,std_ppm,qc"] + [
                f"{r['label']},{r['name']},{r['voxels']},{r['volume_ml']:.4f},{r['mean_ppm']:.6f},{r['std_ppm']:.6f},{r['qc']}"
                for r in rows
            ]
            out.path("regions.csv").write_text("\n".join(lines) + "\n")
        quicklook(
            out.path("quicklook.png"), mag[..., 0] if mag.ndim == 4 else mag, result.mask, result.qsm, result.segmentation, props.affine
        )
        if dicom_out:
            provenance["dicom_out"] = _write_dicom(dicom_out, dicom_format, result, props, dicom)
        provenance["timings_s"]["load"] = round(t_load, 4)
        provenance["timings_s"]["write"] = round(time.perf_counter() - t1, 4)
        provenance["timings_s"]["total"] = round(time.perf_counter() - t0, 4)
        # provenance.json is renamed into OUTDIR last: its presence marks a complete result
        out.path("provenance.json").write_text(json.dumps(provenance, indent=2))
    return provenance
