"""``pedq-run``: GRE magnitude + phase NIfTI -> QSM on the input grid."""
from __future__ import annotations

import click

from ..backends import BACKENDS
from ._common import StageProgress, echo_err, entry_point

_HELP = """Reconstruct a QSM map from a GRE MAGNITUDE and PHASE pair into OUTDIR.

Each input is a NIfTI file or a DICOM folder; one DICOM folder holding both series (ImageType
M and P) may be given alone. TE and field strength then come from the DICOM headers.

Echo time and field strength come from the options or from BIDS JSON sidecars next to the
inputs. Phase may be in radians or in scanner integers (-4096..4095, 0..4095), rescaled
automatically. The B0 direction is read from the affine (B0 = scanner z) unless given.

Writes mask.nii.gz, phase_unwrapped.nii.gz (rad), local_field.nii.gz (ppm), qsm.nii.gz (ppm),
consistency.nii.gz (QC), quicklook.png and provenance.json, all on the input grid; with a
segmentation model also segmentation.nii.gz (FreeSurfer labels) and regions.csv.

With --bids, MAGNITUDE is a BIDS dataset: every GRE/MEGRE run (part-mag / part-phase, echoes as
echo-N, EchoTime and MagneticFieldStrength from the sidecars) is processed into OUTDIR as BIDS
derivatives (_Chimap, masks, _dseg, QC maps), with regions.tsv and report.html for the study.
Runs are independent Dask tasks; a rerun skips runs that are complete and unchanged.
"""


@click.command(help=_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("magnitude", type=click.Path())
@click.argument("phase", type=click.Path(), required=False)
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--echo-time", type=float, help="Echo time in seconds (default: BIDS sidecar EchoTime).")
@click.option("--field-strength", type=float, help="Field strength in tesla (default: sidecar MagneticFieldStrength).")
@click.option("--b0-direction", type=float, nargs=3, help="B0 unit vector in the voxel frame (default: from the affine).")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False), help="Brain mask NIfTI (default: classic masking).")
@click.option("--inversion", type=click.Choice(["auto", "pedq", "tkd", "tv"]), default="auto", show_default=True,
              help="auto: pedq when PedQ-NET models are found, else tkd.")
@click.option("--masker", type=click.Choice(["auto", "network", "classic"]), default="auto", show_default=True,
              help="auto: the masking network when a mask model is found, else classic.")
@click.option("--mask-mirror/--no-mask-mirror", default=False, show_default=True,
              help="Run the masking network on the left-right mirror image too and average the probabilities (twice the masking time; "
                   "no clear gain on held-out heads, see benchmarks/RESULTS.md).")
@click.option("--mask-threshold", type=float,
              help="The masking network's brain probability above which a voxel is brain (default: the one chosen on validation heads, "
                   "section 'mask_threshold' of benchmarks/RESULTS.md; provenance.json records it).")
@click.option("--models", "models_dir", type=click.Path(file_okay=False), help="Folder of exported models (default: $PEDQ_MODELS, else the shipped ones; 'none': no networks).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--unwrap", type=click.Choice(["laplacian", "lsq", "quality"]), default="lsq", show_default=True,
              help="lsq: least squares on the wrapped neighbour differences; laplacian: Schofield & Zhu (errs at long echo times); "
                   "quality: path following.")
@click.option("--tkd-threshold", type=float, default=0.19, show_default=True)
@click.option("--tv-lambda", type=float, default=3e-4, show_default=True)
@click.option("--tv-iterations", type=int, default=60, show_default=True)
@click.option("--refine/--no-refine", default=False, show_default=True,
              help="Refine PedQ-NET's map by TV on the local field, with the map as a prior (--refine-lambda, --refine-weight, --tv-iterations), "
                   "TV lifted across the segmented deep grey matter's boundaries (--refine-edge-weight, --refine-edge-mode; needs a segmentation model or --labels): "
                   "the field decides outside the magic-angle cone and makes the structures' edges. Sharper deep grey matter, noisier "
                   "within it (benchmarks/RESULTS.md).")
@click.option("--refine-weight", type=float, default=0.003, show_default=True,
              help="With --refine: the prior's weight, in squared dipole-kernel units (the prior decides where D(k)^2 is below it).")
@click.option("--refine-lambda", type=float, default=3e-4, show_default=True,
              help="With --refine: its TV weight (plain TV's is --tv-lambda), except on the structures' boundaries (--refine-edge-weight).")
@click.option("--refine-edge-weight", type=float, default=0.0, show_default=True,
              help="With --refine: its TV weight is multiplied by this on the boundaries of the segmented deep grey matter structures "
                   "(the segmentation network's, or --labels), so the field can make their edges there; 1: the same weight everywhere.")
@click.option("--refine-edge-band", type=int, default=3, show_default=True,
              help="With --refine-edge-weight: the boundaries' half-width in voxels.")
@click.option("--refine-edge-mode", type=click.Choice(["voxels", "across"]), default="across", show_default=True,
              help="With --refine-edge-weight: voxels: lower TV on every difference from a voxel near a boundary; across: only on the "
                   "differences across the boundaries, TV keeping its weight along them (less noise within the structures).")
@click.option("--vsharp-radii", type=str, help="Comma-separated SMV radii in mm (default: 12 mm down to 2x the thickest voxel).")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False),
              help="Label image on the magnitude's grid (FreeSurfer numbers, e.g. a registered atlas): regions.csv from it instead of the segmentation network.")
@click.option("--dicom-out", type=click.Path(file_okay=False), help="Also write the QSM (and the segmentation, as DICOM SEG) here.")
@click.option("--dicom-format", type=click.Choice(["mr", "parametric-map"]), default="mr", show_default=True,
              help="mr: integer MR images with RescaleSlope to ppm (shown by every viewer); parametric-map: float values in ppm.")
@click.option("--bids", is_flag=True, help="MAGNITUDE is a BIDS dataset: process every GRE/MEGRE run into OUTDIR (derivatives).")
@click.option("--participant-label", multiple=True, help="With --bids: only these participants (repeatable; with or without sub-).")
@click.option("--session", multiple=True, help="With --bids: only these sessions (repeatable; with or without ses-).")
@click.option("--scheduler", default="auto", show_default=True,
              help="With --bids: auto (a local Dask cluster when Dask is installed), local, none (in this process), or a Dask scheduler address.")
@click.option("--workers", type=int, help="With --bids and a local cluster: number of worker processes (default: what cores and memory allow).")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
def command(magnitude, phase, outdir, echo_time, field_strength, b0_direction, mask_path, labels_path, inversion, masker, mask_mirror, mask_threshold, models_dir, backend,
            unwrap, tkd_threshold, tv_lambda, tv_iterations, refine, refine_weight, refine_lambda, refine_edge_weight, refine_edge_band,
            refine_edge_mode, vsharp_radii, dicom_out, dicom_format, bids, participant_label, session,
            scheduler, workers, quiet):
    from ..errors import InputError
    from ..runtime.pipeline import STAGES, run_case_files

    radii = None
    if vsharp_radii:
        try:
            radii = tuple(float(r) for r in vsharp_radii.split(","))
        except ValueError:
            raise InputError(f"--vsharp-radii must be numbers separated by commas, got {vsharp_radii!r}") from None
    overrides = dict(
        b0_direction=tuple(b0_direction) if b0_direction else None,
        unwrap=unwrap,
        inversion=inversion,
        masker=masker,
        mask_mirror=mask_mirror,
        **({"mask_threshold": mask_threshold} if mask_threshold is not None else {}),
        vsharp_radii=radii,
        tkd_threshold=tkd_threshold,
        tv_lambda=tv_lambda,
        tv_iterations=tv_iterations,
        refine_weight=refine_weight if refine else 0.0,
        refine_lambda=refine_lambda,
        refine_edge_weight=refine_edge_weight,
        refine_edge_band=refine_edge_band,
        refine_edge_mode=refine_edge_mode,
    )
    if refine and not refine_weight > 0:
        raise InputError(f"--refine-weight must be positive, got {refine_weight}")
    if bids and labels_path:
        raise InputError("--labels is per scan: it does not go with --bids")
    if bids:
        return _study(magnitude, phase, outdir, overrides, echo_time, field_strength, mask_path, dicom_out, participant_label, session,
                      scheduler, workers, models_dir, backend, quiet)
    if participant_label or session or workers is not None or scheduler != "auto":
        raise InputError("--participant-label, --session, --scheduler and --workers go with --bids")
    prov = run_case_files(
        magnitude, phase, outdir, overrides, dicom_out=dicom_out, dicom_format=dicom_format,
        echo_time=echo_time, field_strength=field_strength, mask_path=mask_path, labels_path=labels_path, models_dir=models_dir, backend=backend,
        progress=StageProgress(STAGES, quiet), log=(lambda m: None) if quiet else (lambda m: echo_err(f"pedq-run: {m}")),
    )
    if not quiet:
        echo_err(f"pedq-run: wrote {outdir} in {prov['timings_s']['total']:.1f} s (coverage {prov['coverage']:.1%} of the brain mask)")
        for flag in prov["qc"].get("flags", []):
            echo_err(f"pedq-run: QC: {flag}")


def _study(bids_dir, phase, outdir, overrides, echo_time, field_strength, mask_path, dicom_out, participant_label, session,
           scheduler, workers, models_dir, backend, quiet):
    import sys

    from ..cohort import run_study
    from ..errors import InputError

    if phase is not None:
        raise InputError("--bids takes one folder (the BIDS dataset), not a magnitude and a phase")
    if echo_time is not None or field_strength is not None or mask_path or dicom_out or overrides.get("b0_direction"):
        raise InputError("with --bids, echo times and field strength come from the sidecars, B0 from each image; "
                         "--mask, --dicom-out and --b0-direction are per scan")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    summary = run_study(bids_dir, outdir, overrides, participant_labels=participant_label, sessions=session, models_dir=models_dir,
                        backend=backend, scheduler=scheduler, workers=workers, quiet=quiet,
                        log=(lambda m: None) if quiet else (lambda m: echo_err(f"pedq-run: {m}")))
    c = summary["counts"]
    echo_err(f"pedq-run: study in {outdir}: {c['done']} done, {c['skipped']} up to date, {c['failed']} failed, "
             f"{c['not run']} not processable ({summary['wall_seconds']:.0f} s); report: {outdir}/report.html")
    for r in summary["runs"]:
        if r["status"] in ("failed", "not run"):
            echo_err(f"pedq-run:   {r['run']}_{r['suffix']}: {r['status']}: {r['reason']}")
    if c["failed"]:
        sys.exit(1)


main = entry_point(command, "pedq-run")


if __name__ == "__main__":
    main()
