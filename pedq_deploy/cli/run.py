"""``pedq-run``: one GRE scan (magnitude + phase) -> QSM and its companions in OUTDIR."""

from __future__ import annotations

import click

from .. import __version__
from ._common import StageProgress, echo_err, entry_point, pipeline_options, print_config_option, settings_from

_HELP = """Reconstruct a QSM map (ppm) from a GRE MAGNITUDE and PHASE into OUTDIR.

Each input is a NIfTI file or a DICOM folder (one DICOM folder holding both series may be given
alone). Echo time and field strength come from the options, the BIDS JSON sidecars or the DICOM
headers; B0 from the affine. Writes qsm.nii.gz, mask.nii.gz, local_field.nii.gz,
phase_unwrapped.nii.gz, consistency.nii.gz (QC), quicklook.png and provenance.json, and with
segmentation segmentation.nii.gz and regions.csv. Algorithmic settings: --config FILE
(--print-config shows them). A BIDS study: pedq-study.
"""


@click.command(help=_HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("magnitude", type=click.Path())
@click.argument("phase", type=click.Path(), required=False)
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False), help="Output folder (new or empty).")
@click.option("--overwrite", is_flag=True, help="Replace what OUTDIR (and --dicom-out) holds.")
@click.option("--echo-time", type=float, help="Echo time in seconds.")
@click.option("--field-strength", type=float, help="Field strength in tesla.")
@click.option("--b0-direction", type=float, nargs=3, help="B0 unit vector in the voxel frame.")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False), help="Brain mask on the magnitude's grid.")
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(dir_okay=False),
    help="Label image (FreeSurfer numbers) on the magnitude's grid: regions.csv from it.",
)
@pipeline_options
@click.option("--dicom-out", type=click.Path(file_okay=False), help="Also write the QSM as DICOM here.")
@click.option("--dicom-format", type=click.Choice(["mr", "parametric-map"]), default="mr", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@print_config_option
@click.version_option(__version__, prog_name="pedq-run")
def command(
    magnitude,
    phase,
    outdir,
    overwrite,
    echo_time,
    field_strength,
    b0_direction,
    mask_path,
    labels_path,
    inversion,
    config_path,
    models_dir,
    backend,
    dicom_out,
    dicom_format,
    quiet,
):
    from ..runtime.pipeline import STAGES, run_case_files

    prov = run_case_files(
        magnitude,
        phase,
        outdir,
        settings_from(config_path, inversion),
        overwrite=overwrite,
        echo_time=echo_time,
        field_strength=field_strength,
        b0_direction=tuple(b0_direction) if b0_direction else None,
        mask_path=mask_path,
        labels_path=labels_path,
        models_dir=models_dir,
        backend=backend,
        dicom_out=dicom_out,
        dicom_format=dicom_format,
        progress=StageProgress(STAGES, quiet),
        log=(lambda m: None) if quiet else (lambda m: echo_err(f"pedq-run: {m}")),
    )
    if not quiet:
        echo_err(
            f"pedq-run: wrote {outdir} in {prov['timings_s']['total']:.1f} s; chi has values in "
            f"{prov['coverage']:.1%} of the brain mask it used (mask.nii.gz"
            + (
                "; the rim V-SHARP eroded is filled from the field inside it)"
                if prov.get("rim_filled")
                else "; the rest is eroded by V-SHARP)"
            )
        )
        for flag in prov["qc"].get("flags", []):
            echo_err(f"pedq-run: QC: {flag}")


main = entry_point(command, "pedq-run")


if __name__ == "__main__":
    main()
