"""``pedq-send``: send a GRE series (NIfTI pair or DICOM folders) to pedq-serve and save the QSM it returns."""

from __future__ import annotations

import click

from ._common import echo_err, entry_point


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("magnitude", type=click.Path())
@click.argument("phase", type=click.Path(), required=False)
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False), help="Where qsm.nii.gz (ppm) goes.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9002, show_default=True, type=click.IntRange(1, 65535))
@click.option("--config", default="pedq", show_default=True, help="Pipeline on the server: pedq, pedq-net, pedq-tkd, pedq-tv.")
@click.option("--segmentation", is_flag=True, help="Ask for the deep grey matter segmentation too.")
@click.option("--echo-time", type=float, help="Seconds (default: the sidecar or DICOM header).")
@click.option("--field-strength", type=float, help="Tesla (default: the sidecar or DICOM header).")
def command(magnitude, phase, outdir, host, port, config, segmentation, echo_time, field_strength):
    """Send MAGNITUDE and PHASE (NIfTI files or DICOM folders; one DICOM folder may hold both) as MRD
    images to pedq-serve, receive the QSM and write it, on the input grid, to OUTDIR."""
    try:
        import ismrmrd  # noqa: F401
    except ImportError as exc:
        from ..errors import InputError

        raise InputError(f"pedq-send needs the mrd extra: {exc}") from None
    import time

    import numpy as np

    from ..io import StagedOutput, save_image
    from ..mrd.client import send_series
    from ..runtime.pipeline import acquisition_of, load_inputs

    mag, phase_rad, _, props, _, dicom = load_inputs(magnitude, phase)
    te, b0, _ = acquisition_of(magnitude, phase, dicom, echo_time, field_strength)
    t0 = time.perf_counter()
    qsm, labels, texts = send_series(host, port, mag, phase_rad, props.affine, te, b0, config=config, segmentation=segmentation)
    for t in texts:
        echo_err(t)
    with StagedOutput(outdir) as out:
        save_image(out.path("qsm.nii.gz"), qsm.astype(np.float32), props.affine)
        if labels is not None:
            save_image(out.path("segmentation.nii.gz"), labels, props.affine, dtype=np.uint8)
    echo_err(f"pedq-send: QSM from {host}:{port} ({config}) in {time.perf_counter() - t0:.1f} s -> {outdir}")


main = entry_point(command, "pedq-send")


if __name__ == "__main__":
    main()
