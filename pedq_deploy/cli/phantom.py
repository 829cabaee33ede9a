"""``pedq-phantom``: write a simulated pediatric head scan and its truth."""

from __future__ import annotations

import click

from ._common import echo_err, entry_point


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--age", type=click.Choice(["neonate", "infant"]), default="neonate", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tilt", "tilt", type=float, default=None, help="Head tilt from B0 in degrees (default: random 0-30).")
@click.option("--shape", type=int, nargs=3, default=(256, 256, 80), show_default=True)
@click.option("--voxel-size", type=float, nargs=3, default=(0.78, 0.78, 2.0), show_default=True)
@click.option("--echo-time", type=float, default=4.92e-3, show_default=True, help="Seconds.")
@click.option("--field-strength", type=float, default=3.0, show_default=True, help="Tesla.")
@click.option("--snr", type=float, default=100.0, show_default=True, help="Mean brain magnitude / noise sigma.")
@click.option("--phase-format", type=click.Choice(["radians", "siemens"]), default="radians", show_default=True)
@click.option(
    "--anatomy",
    type=click.Choice(["procedural", "icbm", "cvs"]),
    default="procedural",
    show_default=True,
    help="The brain: the procedural phantom's, or a real brain template warped at random (needs the anatomy extra).",
)
def command(outdir, age, seed, tilt, shape, voxel_size, echo_time, field_strength, snr, phase_format, anatomy):
    """Simulate a GRE scan of a neonate or infant head into OUTDIR.

    Writes magnitude/phase NIfTI with BIDS sidecars, and the truth: chi.nii.gz (ppm, referenced to
    the brain mean), local_field.nii.gz (ppm), brain_mask.nii.gz, labels.nii.gz (FreeSurfer
    numbers of the 8 deep grey matter structures) and phantom.json.
    """
    from ..phantom import make_subject, write_subject

    subject = make_subject(
        seed=seed,
        age=age,
        shape=shape,
        voxel_size=voxel_size,
        tilt_deg=tilt,
        echo_time=echo_time,
        field_strength=field_strength,
        snr=snr,
        phase_format=phase_format,
        anatomy=anatomy,
    )
    write_subject(subject, outdir)
    echo_err(f"pedq-phantom: wrote a {age} (seed {seed}, tilt {subject.params['tilt_deg']:.1f} deg) to {outdir}")


main = entry_point(command, "pedq-phantom")
