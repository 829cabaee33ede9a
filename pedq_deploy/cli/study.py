"""``pedq-study``: every GRE/MEGRE run of a BIDS dataset -> BIDS derivatives, a regions table and a report."""

from __future__ import annotations

import sys

import click

from .. import __version__
from ._common import echo_err, entry_point, pipeline_options, print_config_option, settings_from

_HELP = """Process every GRE/MEGRE run of the BIDS dataset BIDS_DIR into OUTDIR as BIDS derivatives.

Runs are found by their part-mag / part-phase images (echoes as echo-N, suffix T2starw or MEGRE);
EchoTime and MagneticFieldStrength come from the sidecars, B0 from each image. Writes _Chimap
(ppm), brain masks, deep grey matter _dseg and QC maps per run, and regions.tsv and report.html for
the study. Runs are independent Dask tasks; a rerun skips the runs that are complete and unchanged,
and redoes those whose inputs, settings or models changed.
"""


@click.command(help=_HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bids_dir", type=click.Path(file_okay=False))
@click.option(
    "-o",
    "--outdir",
    required=True,
    type=click.Path(file_okay=False),
    help="Derivatives folder (e.g. BIDS_DIR/derivatives/pedq); resumed when it exists.",
)
@click.option("--participant-label", multiple=True, help="Only these participants (repeatable; with or without sub-).")
@click.option("--session", multiple=True, help="Only these sessions (repeatable; with or without ses-).")
@pipeline_options
@click.option(
    "--scheduler",
    default="auto",
    show_default=True,
    help="auto (a local Dask cluster when Dask is installed), local, none (in this process), or a scheduler address.",
)
@click.option("--workers", type=int, help="Worker processes of a local cluster (default: what cores and memory allow).")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@print_config_option
@click.version_option(__version__, prog_name="pedq-study")
def command(bids_dir, outdir, participant_label, session, inversion, config_path, models_dir, backend, scheduler, workers, quiet):
    from ..cohort import run_study
    from ..errors import InputError

    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    summary = run_study(
        bids_dir,
        outdir,
        settings_from(config_path, inversion),
        participant_labels=participant_label,
        sessions=session,
        models_dir=models_dir,
        backend=backend,
        scheduler=scheduler,
        workers=workers,
        quiet=quiet,
        log=(lambda m: None) if quiet else (lambda m: echo_err(f"pedq-study: {m}")),
    )
    c = summary["counts"]
    echo_err(
        f"pedq-study: {outdir}: {c['done']} done, {c['skipped']} up to date, {c['failed']} failed, "
        f"{c['not run']} not processable ({summary['wall_seconds']:.0f} s); report: {outdir}/report.html"
    )
    for r in summary["runs"]:
        if r["status"] in ("failed", "not run"):
            echo_err(f"pedq-study:   {r['run']}_{r['suffix']}: {r['status']}: {r['reason']}")
    if c["failed"]:
        sys.exit(1)


main = entry_point(command, "pedq-study")


if __name__ == "__main__":
    main()
