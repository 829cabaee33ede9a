"""``pedq-train``: train a PedQ-NET network on simulated pediatric heads (needs the train extra)."""

from __future__ import annotations

import json

import click

from ._common import echo_err, entry_point


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("kind", type=click.Choice(["mask", "recon", "joint", "tv", "seg"]))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="JSON config (see pedq_deploy/training/config.py).")
@click.option("--out", "outdir", required=True, type=click.Path(file_okay=False), help="Run folder: checkpoint, logs; resumed if present.")
@click.option("--steps", type=int, help="Override the config's number of steps.")
@click.option("--device", type=str, help="cpu, cuda or auto (default: the config's).")
@click.option("--time-limit", type=float, help="Stop (with a checkpoint) after this many minutes; rerun to go on.")
@click.option("--init-from", type=click.Path(file_okay=False), help="Start a new run from exported models (e.g. export/): fine-tuning.")
@click.option(
    "--init-roles",
    type=str,
    help="With --init-from: only these networks (comma-separated, e.g. recon); the others start from random weights.",
)
@click.option(
    "--data-workers", type=int, help="Processes preparing phantom subjects ahead (default: the config's; use most cores with a GPU)."
)
@click.option("-q", "--quiet", is_flag=True)
def command(kind, config_path, outdir, steps, device, time_limit, init_from, init_roles, data_workers, quiet):
    """Train KIND: mask (UNETR), recon (U-Net, model loss), joint (recon + segmentation UNETR), tv (nnU-Net_TV ablation),
    seg (the segmentation UNETR alone, on the maps an exported recon network makes through pedq-run's code: config seg_recon).

    Data are drawn on the fly from the phantom; checkpoints every few steps; rerunning with the
    same --out resumes.
    """
    try:
        import monai  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        from ..errors import InputError

        raise InputError(f"pedq-train needs the train extra (torch, monai): {exc}") from None
    from ..training.config import load_config
    from ..training.trainer import train

    if time_limit is not None and time_limit <= 0:
        from ..errors import InputError

        raise InputError(f"--time-limit must be positive minutes, got {time_limit}")
    if init_roles is not None and init_from is None:
        from ..errors import InputError

        raise InputError("--init-roles needs --init-from")
    roles = None if init_roles is None else tuple(r.strip() for r in init_roles.split(",") if r.strip())
    cfg = load_config(config_path, steps=steps, device=device, data_workers=data_workers)
    summary = train(
        kind,
        cfg,
        outdir,
        quiet=quiet,
        time_limit_s=None if time_limit is None else time_limit * 60.0,
        init_from=init_from,
        init_roles=roles,
    )
    echo_err("pedq-train: " + json.dumps(summary))


main = entry_point(command, "pedq-train")
