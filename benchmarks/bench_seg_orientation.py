"""Which orientation the segmentation network should run in: the voxel axes or the B0-aligned frame.

The segmentation UNETR was trained in the B0-aligned frame (its manifest's ``frame``: ``b0``):
there the head's anatomy is turned by its tilt, and the reconstruction's streaks lie along the
frame's z axis. ``pedq-run`` has run it on the voxel axes, where the anatomy is upright and the
streaks are tilted. This scores ``PedqModels.segment``'s three orientations (``voxel``, ``b0``, and
``both``: the mean of the two probabilities) on the same PedQ-NET map of each head.

Heads: validation seeds 2000-2009 (a setting is being chosen, so not the held-out heads; ``--held-out``:
the held-out 1000-1009, to report a chosen model as ``pedq-run`` runs it), neonates and infants alternating, tilts 0-30 deg, source protocol (TE 4.92 ms, SNR 100), ``lsq``
unwrapping, V-SHARP in the true brain mask, PedQ-NET's map as ``bench_pedqnet.py`` makes it.

``.venv/bin/python benchmarks/bench_seg_orientation.py [--subjects 10] [--models DIR] [--section NAME] [--mask true|network]
[--orientations voxel,b0,both] [--held-out] [--from-json]`` ->
"seg_orientation" (or NAME) section of RESULTS.md and results/seg_orientation.json (NAME.json).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import HELD_OUT_SEEDS, machine, model_provenance, read_records, update_section, write_records  # noqa: E402

from bench_pedqnet import load_models, source_heads  # noqa: E402

from pedq_deploy import metrics as M  # noqa: E402
from pedq_deploy.backends import load_manifest  # noqa: E402
from pedq_deploy.runtime.networks import find_models  # noqa: E402
from pedq_deploy.training.data import subject_local_field  # noqa: E402

ORIENTATIONS = ("voxel", "b0", "both")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--models", help="PedQ-NET models (recon, seg); default: the shipped ones")
    ap.add_argument("--section", default="seg_orientation", help="RESULTS.md section; also names results/SECTION.json")
    ap.add_argument("--mask", choices=("true", "network"), default="true",
                    help="brain mask for V-SHARP and the segmentation box: the phantom's, or the masking network's (as pedq-run)")
    ap.add_argument("--orientations", default=",".join(ORIENTATIONS), help="comma-separated, of " + ", ".join(ORIENTATIONS))
    ap.add_argument("--held-out", action="store_true", help="the held-out heads (seeds 1000-1009): to report a model chosen on the validation heads")
    ap.add_argument("--from-json", action="store_true", help="rewrite the section from results/SECTION.json without rerunning")
    args = ap.parse_args()
    args.orientations = tuple(o for o in args.orientations.split(",") if o)
    if not args.orientations or set(args.orientations) - set(ORIENTATIONS):
        sys.exit(f"--orientations: a comma-separated list of {', '.join(ORIENTATIONS)}")
    out = Path(__file__).with_name("results") / f"{args.section}.json"
    if args.from_json:
        records, note, manifests = read_records(out)
        update_section(args.section, report(records, find_models(args.models), args, note, manifests))
        return
    found, pedq = load_models(args.models)
    if not pedq.has("seg"):
        sys.exit(f"no segmentation model (seg.json) in {found}")
    note = machine()
    records = []
    for seed, age, tilt, s in source_heads(args.held_out, args.subjects):
        # --mask network: pedq-run's default, the masking network's mask for unwrapping, V-SHARP and the box
        brain = pedq.mask(s.magnitude, s.voxel_size) if args.mask == "network" else None
        local, eroded = subject_local_field(s, unwrap="lsq", mask=brain)
        chi = pedq.reconstruct(local, eroded, s.voxel_size, s.b0_direction)
        rec = {"seed": seed, "age": age, "tilt_deg": tilt, "dice": {}, "seconds": {}}
        for o in args.orientations:
            t0 = time.perf_counter()
            lab = pedq.segment(chi, eroded, s.voxel_size, b0=s.b0_direction, orientation=o)
            rec["seconds"][o] = time.perf_counter() - t0
            rec["dice"][o] = {M.FS_DGM_NAMES[k]: M.dice(lab == k, s.labels == k) for k in M.FS_DGM_NAMES}
        records.append(rec)
        print(f"seed {seed} {age} tilt {tilt:.0f}: " + "; ".join(f"{o} {np.mean(list(rec['dice'][o].values())):.3f}"
                                                                for o in args.orientations), flush=True)
    pedq.close()
    write_records(out, records, note, found)
    update_section(args.section, report(records, found, args, note))


def report(records, models_dir, args, note, manifests: dict | None = None) -> str:
    mean = lambda r, o: float(np.mean(list(r["dice"][o].values())))  # noqa: E731
    title = "" if args.models is None else f", models `{args.models}`"
    done = list(records[0]["dice"])  # the orientations run
    held_out = records[0]["seed"] in HELD_OUT_SEEDS
    kind = "held-out" if held_out else "validation"
    trained = {"b0": "in the B0-aligned frame (a `joint` run)", "voxel": "on the voxel axes (a `seg` run)"}.get(
        (manifests["seg"] if manifests else load_manifest(Path(models_dir) / "seg.json").raw).get("frame"), "in an unrecorded orientation")
    lines = [f"## Segmentation: voxel axes or B0-aligned frame ({kind} heads{title})", "",
             f"{kind.capitalize()} heads (seeds {records[0]['seed']}-{records[-1]['seed']}"
             + ("" if held_out else ", not the held-out 1000-1009") + "; neonates and infants "
             "alternating, tilts 0-30 deg), source protocol (TE 4.92 ms, SNR 100), least-squares unwrapping, V-SHARP in the "
             + ("true brain mask" if args.mask == "true" else "masking network's brain mask (as `pedq-run`), which also sets the segmentation box")
             + f", PedQ-NET's map. The segmentation network was trained {trained}; `voxel` runs it on the voxel axes, "
             "`b0` in the B0-aligned frame, `both` averages the two probabilities. Dice against the true labels; mean over the 8 "
             "structures, then mean ± SD over heads.",
             f"Segmentation network: {model_provenance(models_dir, 'seg', manifests)}.",
             f"Machine: {note}. Script: `benchmarks/bench_seg_orientation.py" + ("" if len(records) == 10 else f" --subjects {len(records)}")
             + ("" if args.models is None else f" --models {args.models}")
             + ("" if args.section == "seg_orientation" else f" --section {args.section}")
             + ("" if args.mask == "true" else f" --mask {args.mask}")
             + ("" if done == list(ORIENTATIONS) else f" --orientations {','.join(done)}")
             + (" --held-out" if held_out else "")
             + f"`; raw numbers in `benchmarks/results/{args.section}.json`.", "",
             "| orientation | mean Dice | tilt < 15 deg | tilt >= 15 deg | neonates | infants | heads best | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    best = [max(done, key=lambda o: mean(r, o)) for r in records]
    for o in done:
        groups = [[mean(r, o) for r in records if cond(r)] for cond in
                  (lambda r: True, lambda r: r["tilt_deg"] < 15, lambda r: r["tilt_deg"] >= 15,
                   lambda r: r["age"] == "neonate", lambda r: r["age"] == "infant")]
        cells = [f"{np.mean(g):.3f} ± {np.std(g):.3f}" if g else "-" for g in groups]
        secs = np.median([r["seconds"][o] for r in records])
        lines.append(f"| {o} | " + " | ".join(cells) + f" | {best.count(o)} | {secs:.1f} |")
    names = list(records[0]["dice"][done[0]])
    lines += ["", "Per structure (mean Dice over heads):", "", "| orientation | " + " | ".join(names) + " |",
              "| --- |" + " ---: |" * len(names)]
    for o in done:
        lines.append(f"| {o} | " + " | ".join(f"{np.mean([r['dice'][o][n] for r in records]):.3f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
