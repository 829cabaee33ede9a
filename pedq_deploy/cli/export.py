"""``pedq-export``: a pedq-train checkpoint -> ONNX models + manifests (-> TensorRT engines)."""

from __future__ import annotations

import json

import click

from ._common import echo_err, entry_point


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path())
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["onnx", "tensorrt"]), default="onnx", show_default=True)
@click.option("--fp16", is_flag=True, help="TensorRT 10: build with the FP16 flag (refused on TensorRT 11).")
@click.option("--max-batch", type=int, default=4, show_default=True, help="TensorRT optimisation profile: largest batch.")
def command(checkpoint, outdir, fmt, fp16, max_batch):
    """Export the networks of CHECKPOINT (a pedq-train run folder or checkpoint.pt) to OUTDIR.

    Each network becomes ROLE.onnx and ROLE.json (the manifest). The export fails when
    onnxruntime does not reproduce PyTorch (rtol 1e-3, atol 1e-4). --format tensorrt also builds
    ROLE.engine (needs tensorrt and a CUDA GPU) and records it in the manifest.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        from ..errors import InputError

        raise InputError("pedq-export needs the train extra (torch, monai, onnx)") from None
    from ..export import export_checkpoint

    manifests = export_checkpoint(checkpoint, outdir)
    if fmt == "tensorrt":
        from pathlib import Path

        from ..backends.tensorrt import build_engine

        for mpath in manifests:
            m = json.loads(Path(mpath).read_text())
            engine = Path(outdir) / f"{m['role']}.engine"
            info = build_engine(
                str(Path(outdir) / m["file"]),
                str(engine),
                m["patch"],
                m["inputs"][0]["shape"][1],
                fp16=fp16,
                max_batch=max_batch,
                timing_cache=str(Path(outdir) / "timing.cache"),
            )
            m["tensorrt_engine"], m["tensorrt_engine_sha256"], m["tensorrt"] = engine.name, info["sha256"], info
            Path(mpath).write_text(json.dumps(m, indent=2))
    echo_err("pedq-export: wrote " + ", ".join(str(m) for m in manifests))


main = entry_point(command, "pedq-export")
