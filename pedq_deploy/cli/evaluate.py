"""``pedq-eval``: score a pedq-run output folder against phantom truth."""

from __future__ import annotations

import json

import click

from ._common import echo_err, entry_point


def evaluate_folder(outdir: str, truth_dir: str) -> dict:
    """Scores of OUTDIR (qsm, local field, mask) against the phantom truth in TRUTH_DIR."""
    from pathlib import Path

    from .. import metrics
    from ..errors import InputError
    from ..io import load_image

    o, t = Path(outdir), Path(truth_dir)
    qsm, qprops = load_image(o / "qsm.nii.gz", name="qsm")
    chi, tprops = load_image(t / "chi.nii.gz", name="truth chi")
    if qsm.shape != chi.shape:
        raise InputError(f"output grid {qsm.shape} differs from the truth grid {chi.shape}")
    brain = load_image(t / "brain_mask.nii.gz", name="truth brain mask")[0] > 0
    labels = load_image(t / "labels.nii.gz", name="truth labels")[0].astype(int)
    local_true = load_image(t / "local_field.nii.gz", name="truth local field")[0]
    result = {
        "reference": "truth: mean over the brain mask; output: mean over its eroded mask",
        "qsm": metrics.score_qsm(qsm, chi, brain, labels),
    }
    lf = o / "local_field.nii.gz"
    if lf.is_file():
        local = load_image(lf, name="local field")[0]
        result["local_field"] = {"nrmse": metrics.nrmse(local, local_true, brain), "coverage": metrics.coverage(local, brain)}
    mk = o / "mask.nii.gz"
    if mk.is_file():
        result["mask"] = {"dice": metrics.dice(load_image(mk, name="mask")[0] > 0, brain)}
    return result


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--truth", "truth_dir", required=True, type=click.Path(file_okay=False), help="A pedq-phantom folder.")
def command(outdir, truth_dir):
    """Score the pedq-run output in OUTDIR against phantom truth; writes OUTDIR/metrics.json."""
    import os
    import tempfile

    result = evaluate_folder(outdir, truth_dir)
    fd, tmp = tempfile.mkstemp(prefix=".metrics.", dir=outdir)
    with os.fdopen(fd, "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(tmp, os.path.join(outdir, "metrics.json"))
    q = result["qsm"]
    echo_err(
        f"pedq-eval: NRMSE {q['nrmse']:.3f}  HFEN {q['hfen']:.3f}  SSIM {q['ssim']:.3f}  XSIM {q['xsim']:.3f}  "
        f"DGM edge sharpness {q.get('dgm_edge_sharpness', float('nan')):.2f}; chi has values in {q['coverage']:.1%} of the true "
        "brain mask (scored over all of it, missing values as zero)"
    )


main = entry_point(command, "pedq-eval")
