"""The source study's comparison, as numbers: TKD, iterative TV, nnU-Net_TV and PedQ-NET on held-out heads.

Held-out subjects (seeds 1000-1009, never drawn in training: training uses seeds 0-999 and
validation 2000-2001), neonates and infants alternating, tilts spread over 0-30 degrees, the
source protocol (256x256x80, 0.78x0.78x2 mm, 3 T, TE 4.92 ms, SNR 100).

* QSM: every method inverts the SAME local field (``--unwrap`` unwrapping and V-SHARP inside the
  true brain mask), so the table compares inversions, not masks. Scores over the whole truth brain
  mask (QSM-CI convention), DGM edge sharpness, per-structure mean error.
* Masks: the masking network, the classic masker and (where ``brainextractor`` installs) a BET
  reimplementation, against the truth brain mask: Dice, mean boundary distance and HD95.
* Segmentation: the PedQ-NET segmentation network on PedQ-NET's QSM, Dice per structure.
* A figure like the source study's (``benchmarks/results/pedqnet_comparison.png``): the same
  slices for each method, and the "predicted dipole kernel" F[local field] / F[chi] of each output
  next to the true kernel (the source study's Fig. 5).

``--validation`` scores validation heads (seeds 2000-2009) instead: for choosing between models
(which to ship, which settings) without looking at the held-out heads.

``.venv/bin/python benchmarks/bench_pedqnet.py [--models DIR] [--tv-models DIR] [--subjects N] [--grid training]``;
writes the "pedqnet" section of benchmarks/RESULTS.md and benchmarks/results/pedqnet.json.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import HELD_OUT_SEEDS, VALIDATION_SEEDS, machine, model_provenance, update_section  # noqa: E402

from pedq_deploy import metrics as M  # noqa: E402
from pedq_deploy.inversion import structure_edge_weight, tkd, tv_admm  # noqa: E402
from pedq_deploy.phantom import make_subject  # noqa: E402
from pedq_deploy.physics import dipole_kernel  # noqa: E402
from pedq_deploy.postprocess import segmentation_checks  # noqa: E402
from pedq_deploy.preprocess import UNWRAP_METHODS, classic_mask  # noqa: E402
from pedq_deploy.runtime.networks import PedqModels, find_models  # noqa: E402
from pedq_deploy.runtime.pipeline import REFINE_LAMBDA, REFINE_WEIGHT, PipelineConfig  # noqa: E402
from pedq_deploy.training.config import TrainConfig  # noqa: E402
from pedq_deploy.training.data import subject_local_field  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GRIDS = {"source": {}, "training": {"shape": TrainConfig.grid, "voxel_size": TrainConfig.voxel_size}}
UNWRAP_NAMES = {"laplacian": "Laplacian", "lsq": "least-squares", "quality": "quality-guided"}
REFINED = "PedQ-NET + guided TV refinement"  # pedq-run --refine: its seconds include the network's and the segmentation's
QSM_KEYS = ("nrmse", "nrmse_covered", "hfen", "ssim", "xsim", "dgm_edge_sharpness", "dgm_mean_abs_error_ppm", "coverage")


def heads(seeds, **protocol):
    """The benchmark heads of ``seeds``: neonates and infants alternating, tilts spread over 0-30 deg.

    Yields (seed, age, tilt in degrees, subject); ``protocol`` goes to ``make_subject`` (snr,
    echo_time, and a grid's shape and voxel size)."""
    seeds = list(seeds)
    for i, (seed, tilt) in enumerate(zip(seeds, np.linspace(0.0, 30.0, len(seeds)))):
        age = "neonate" if i % 2 == 0 else "infant"
        yield seed, age, float(tilt), make_subject(seed=seed, age=age, tilt_deg=float(tilt), **protocol)


def source_heads(held_out: bool, subjects: int):
    """:func:`heads` at the source protocol (TE 4.92 ms, SNR 100): the first ``subjects`` held-out
    heads (seeds 1000-1009) or validation heads (2000-2009)."""
    return heads(list(HELD_OUT_SEEDS if held_out else VALIDATION_SEEDS)[:subjects], snr=100.0, echo_time=4.92e-3)


def load_models(models=None) -> tuple[Path, PedqModels]:
    """PedQ-NET models from ``models`` (default: the shipped ones): their folder, and loaded on onnxruntime."""
    found = find_models(models)
    if found is None:
        sys.exit("no PedQ-NET models found: train and export them first (README, 'Training')")
    return found, PedqModels(found, backend="onnxruntime")


def covered_nrmse(chi, truth, eroded) -> float:
    """NRMSE where V-SHARP left values, both maps referenced to their mean there."""
    return M.nrmse(np.where(eroded, chi - chi[eroded].mean(), 0.0), np.where(eroded, truth - truth[eroded].mean(), 0.0), eroded)


def bet_mask(magnitude, affine):
    try:
        import nibabel as nib
        from brainextractor import BrainExtractor
    except ImportError:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        be = BrainExtractor(nib.Nifti1Image(np.asarray(magnitude, np.float32), affine))
        be.run()
        be.compute_mask()
    return be.mask > 0


def predicted_kernel(field, chi, mask, width=5):
    """F[field] / F[chi], fftshifted: the dipole kernel an output implies (source study, Fig. 5).

    A least-squares ratio over ``width``^3 neighbourhoods of k-space (Re(F F*) and |C|^2 each
    averaged), so a frequency where chi happens to be near zero does not blow up.
    """
    import scipy.ndimage as ndi

    f = np.fft.fftshift(np.fft.fftn(np.where(mask, field, 0.0)))
    c = np.fft.fftshift(np.fft.fftn(np.where(mask, chi, 0.0)))
    num = ndi.uniform_filter((f * np.conj(c)).real, width)
    den = ndi.uniform_filter(np.abs(c) ** 2, width)
    return num / np.maximum(den, 1e-12 * den.max())


def figure(path, s, outs, local, mask):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dgm = np.argwhere(s.labels > 0)
    cx, cy, cz = (dgm.mean(0).astype(int) if len(dgm) else np.array(s.chi.shape) // 2)
    cols = [("truth", s.chi), *outs.items()]
    fig, ax = plt.subplots(3, len(cols), figsize=(2.6 * len(cols), 8.4))
    aspect = s.voxel_size[2] / s.voxel_size[0]
    for j, (name, chi) in enumerate(cols):
        v = np.where(s.brain_mask, chi, 0.0)
        ax[0, j].imshow(v[:, :, cz].T, cmap="gray", vmin=-0.05, vmax=0.05, origin="lower")
        ax[1, j].imshow(v[:, cy, :].T, cmap="gray", vmin=-0.05, vmax=0.05, origin="lower", aspect=aspect)
        k = dipole_kernel(s.chi.shape, s.voxel_size, s.b0_direction) if name == "truth" else predicted_kernel(local, chi, mask)
        k = np.fft.fftshift(k) if name == "truth" else k
        k_aspect = (s.chi.shape[1] * s.voxel_size[1]) / (s.chi.shape[2] * s.voxel_size[2])  # k-space steps 1/(N v)
        ax[2, j].imshow(k[k.shape[0] // 2, :, :].T, cmap="gray", vmin=-2 / 3, vmax=1 / 3, origin="lower", aspect=k_aspect)
        ax[0, j].set_title(name if name != "truth" else "truth (ppm, ±0.05)", fontsize=9)
        for a in ax[:, j]:
            a.set_xticks([])
            a.set_yticks([])
    ax[0, 0].set_ylabel("axial")
    ax[1, 0].set_ylabel("coronal")
    ax[2, 0].set_ylabel("dipole kernel (ky-kz)\ntrue / F[field]/F[chi]")
    fig.suptitle(f"seed {s.params['seed']}, {s.params['age']}, tilt {s.params['tilt_deg']:.0f} deg, "
                 f"TE {s.echo_time * 1e3:.2f} ms, SNR {s.params['snr']:g}", fontsize=10)
    fig.tight_layout()
    tmp = Path(str(path) + ".partial.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", help="PedQ-NET models (recon, seg, mask); default: the shipped ones")
    ap.add_argument("--tv-models", default=str(REPO / "export" / "nnunet_tv"), help="nnU-Net_TV models (recon)")
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--bet-subjects", type=int, default=4, help="BET is slow (~30 s a head): run it on the first N")
    ap.add_argument("--echo-time", type=float, default=4.92e-3, help="seconds (default: the source protocol's)")
    ap.add_argument("--snr", type=float, default=100.0)
    ap.add_argument("--grid", choices=("source", "training"), default="source",
                    help="the heads' grid: the source protocol's 256x256x80 at 0.78x0.78x2 mm, or the training "
                         "configs' default 160x160x128 at 1.2 mm isotropic (is a gap a grid gap?)")
    ap.add_argument("--unwrap", choices=UNWRAP_METHODS, default="laplacian",
                    help="phase unwrapping before V-SHARP (pedq-run --unwrap, whose default is lsq); Laplacian here, as in every section made "
                         "before lsq existed")
    ap.add_argument("--refine-weight", type=float, default=REFINE_WEIGHT,
                    help="also score PedQ-NET refined by TV with its map as a prior of this weight (pedq-run --refine); 0: not")
    ap.add_argument("--skip-masks", action="store_true", help="score the inversions and the segmentation only")
    ap.add_argument("--validation", action="store_true",
                    help="validation heads (seeds 2000-2009) instead of the held-out ones: for choosing a model or a setting")
    ap.add_argument("--section", default="pedqnet", help="RESULTS.md section; also names results/SECTION.json and the figure")
    args = ap.parse_args()
    found, pedq = load_models(args.models)
    tvnet = PedqModels(args.tv_models, backend="onnxruntime") if Path(args.tv_models, "recon.json").is_file() else None
    note = machine()
    seeds = list(VALIDATION_SEEDS if args.validation else HELD_OUT_SEEDS)[: args.subjects]
    records = []
    out_dir = Path(__file__).with_name("results")
    out_dir.mkdir(exist_ok=True)
    for i, (seed, age, tilt, s) in enumerate(heads(seeds, snr=args.snr, echo_time=args.echo_time, **GRIDS[args.grid])):
        rec = {"seed": seed, "age": age, "tilt_deg": tilt, "qsm": {}, "masks": {}, "seg_dice": {}, "seconds": {}}
        # masks
        masks = {}
        if not args.skip_masks:
            t0 = time.perf_counter()
            masks["classic"] = classic_mask(s.magnitude, s.voxel_size)
            rec["seconds"]["mask classic"] = time.perf_counter() - t0
            if pedq.has("mask"):
                t0 = time.perf_counter()
                masks["network"] = pedq.mask(s.magnitude, s.voxel_size)
                rec["seconds"]["mask network"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                # pedq-run --mask-mirror: also on the mirror image along the voxel axis nearest the world's left-right
                masks["network, mirrored"] = pedq.mask(s.magnitude, s.voxel_size, mirror_axis=int(np.argmax(np.abs(s.affine[0, :3]))))
                rec["seconds"]["mask network, mirrored"] = time.perf_counter() - t0
            if i < args.bet_subjects:
                t0 = time.perf_counter()
                m = bet_mask(s.magnitude, s.affine)
                if m is not None:
                    masks["BET (brainextractor)"] = m
                    rec["seconds"]["mask BET"] = time.perf_counter() - t0
        for name, m in masks.items():
            rec["masks"][name] = {"dice": M.dice(m, s.brain_mask), **M.surface_distance(m, s.brain_mask, s.voxel_size)}
        # one local field for every inversion
        local, eroded = subject_local_field(s, unwrap=args.unwrap)
        outs, segs = {}, {}

        def refined(net):
            """pedq-run --refine: TV with the network's map as a prior, its TV weight lowered on the boundaries of the
            segmentation network's structures (as pedq-run's defaults; unguided without a segmentation model)."""
            cfg = PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength)
            weight = None
            if pedq.has("seg") and cfg.refine_edge_weight < 1:
                segs["PedQ-NET"] = pedq.segment(net, eroded, s.voxel_size)
                weight = structure_edge_weight(segs["PedQ-NET"], cfg.refine_edge_weight, cfg.refine_edge_band,
                                               across=cfg.refine_edge_mode == "across")
            return tv_admm(local, eroded, s.voxel_size, s.b0_direction, cfg.refine_lambda, None, cfg.tv_iterations, prior=net,
                           prior_weight=args.refine_weight, tv_weight=weight)

        for name, fn in (("TKD", lambda: tkd(local, eroded, s.voxel_size, s.b0_direction)),
                         ("TV (iterative)", lambda: tv_admm(local, eroded, s.voxel_size, s.b0_direction, 3e-4, None, 60)),
                         ("nnU-Net_TV", (lambda: tvnet.reconstruct(local, eroded, s.voxel_size, s.b0_direction)) if tvnet else None),
                         ("PedQ-NET", lambda: pedq.reconstruct(local, eroded, s.voxel_size, s.b0_direction)),
                         (REFINED, (lambda: refined(outs["PedQ-NET"])) if args.refine_weight > 0 else None),
                         ("reference: all-zero map", lambda: np.zeros_like(local))):
            if fn is None:
                continue
            t0 = time.perf_counter()
            outs[name] = fn()
            rec["seconds"][name] = time.perf_counter() - t0 + (rec["seconds"]["PedQ-NET"] if name == REFINED else 0.0)
            rec["qsm"][name] = M.score_qsm(outs[name], s.chi, s.brain_mask, s.labels)
            rec["qsm"][name]["nrmse_covered"] = covered_nrmse(outs[name], s.chi, eroded)
        if pedq.has("seg"):
            seg = segs["PedQ-NET"] if "PedQ-NET" in segs else pedq.segment(outs["PedQ-NET"], eroded, s.voxel_size)
            rec["seg_dice"] = {M.FS_DGM_NAMES[k]: M.dice(seg == k, s.labels == k) for k in M.FS_DGM_NAMES}
            # pedq-run's plausibility checks, on the network's labels and (their false alarms) on the true ones
            for key, lab in (("seg_qc", seg), ("truth_qc", np.where(eroded, s.labels, 0))):
                rec[key] = {M.FS_DGM_NAMES[k]: f for k, f in segmentation_checks(lab, s.brain_mask, s.affine, M.FS_DGM_NAMES).items()}
        if i == 0:
            figure(out_dir / f"{args.section}_comparison.png", s, {k: v for k, v in outs.items() if not k.startswith("reference")}, local, eroded)
        records.append(rec)
        print(f"seed {seed} {age} tilt {tilt:.0f}: " + "; ".join(f"{n} NRMSE {q['nrmse']:.3f}" for n, q in rec["qsm"].items())
              + " | masks " + ", ".join(f"{n} {m['dice']:.3f}" for n, m in rec["masks"].items()), flush=True)
    pedq.close()
    if tvnet:
        tvnet.close()
    (out_dir / f"{args.section}.json").write_text(json.dumps(records, indent=1))
    update_section(args.section, report(records, found, args, note))


def _ms(vals):
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if vals else "n/a"


def report(records, models_dir, args, note) -> str:
    methods = list(records[0]["qsm"])
    source = args.echo_time == 4.92e-3 and args.snr == 100.0 and args.grid == "source"
    grid = ("source protocol grid (256x256x80, 0.78x0.78x2 mm, 3 T)" if args.grid == "source" else
            "training grid ({}, {} mm isotropic, 3 T)".format("x".join(map(str, TrainConfig.grid)), TrainConfig.voxel_size[0]))
    protocol = ("source protocol (256x256x80, 0.78x0.78x2 mm, 3 T, TE 4.92 ms, SNR 100)" if source else
                f"{grid} with TE {args.echo_time * 1e3:.2f} ms and SNR {args.snr:g}")
    title = "PedQ-NET against conventional QSM and the nnU-Net_TV ablation (issue 6)" + ("" if source else f", TE {args.echo_time * 1e3:.0f} ms, SNR {args.snr:g}") \
        + ("" if args.grid == "source" else ", training grid") + ("" if args.unwrap == "laplacian" else f", {UNWRAP_NAMES[args.unwrap]} unwrapping") + (", validation heads" if args.validation else "") + ("" if args.models is None else f": models {args.models}")
    options = "" if source else f" --echo-time {args.echo_time:g} --snr {args.snr:g}"
    options += "" if args.grid == "source" else " --grid training"
    options += f" --unwrap {args.unwrap}"
    options += "" if args.models is None else f" --models {args.models}"
    options += "" if args.refine_weight == REFINE_WEIGHT else f" --refine-weight {args.refine_weight:g}"
    options += " --validation" if args.validation else ""
    options += "" if args.subjects == 10 else f" --subjects {args.subjects}"
    options += "" if args.section == "pedqnet" else f" --section {args.section}"
    lines = [f"## {title}", "",
             f"{len(records)} {'validation' if args.validation else 'held-out'} subjects (seeds {records[0]['seed']}-{records[-1]['seed']}; neonates and infants alternating; "
             f"tilts 0-30 deg), {protocol}. Every method inverts the same local field "
             f"({UNWRAP_NAMES[args.unwrap]} unwrapping, V-SHARP in the true brain mask). Scores over the whole truth brain mask, uncovered voxels count as zero "
             "(QSM-CI convention); truth referenced to its brain mean, outputs to their eroded-mask mean. \"NRMSE, covered region\": the same "
             "error inside the V-SHARP-eroded mask only, both maps referenced to their mean there. The all-zero map is a reference: "
             "a method scoring near it has recovered little of the truth's contrast. Mean ± SD over subjects."
             + (f" \"{REFINED}\" (`pedq-run --refine`): TV (lambda {REFINE_LAMBDA:g}, 60 iterations) on the same field with PedQ-NET's map as a "
                f"prior of weight {args.refine_weight:g}, the TV weight multiplied by {PipelineConfig.refine_edge_weight:g} within "
                f"{PipelineConfig.refine_edge_band} voxels of the boundaries of the segmentation network's structures (its labels of PedQ-NET's map)"
                f"{', on the differences across them only' if PipelineConfig.refine_edge_mode == 'across' else ''}; "
                "its seconds include the network's and the segmentation's." if REFINED in methods else ""),
             f"PedQ-NET: {model_provenance(models_dir)}. nnU-Net_TV: {model_provenance(args.tv_models)}."
             + (f" Segmentation UNETR: {model_provenance(models_dir, 'seg')}." if records[0]["seg_dice"] else ""),
             f"Machine: {note}. Script: `benchmarks/bench_pedqnet.py{options}"
             f"{' --skip-masks' if args.skip_masks else ''}`; raw numbers in `benchmarks/results/{args.section}.json`; "
             f"figure `benchmarks/results/{args.section}_comparison.png`.", ""]
    for age in (None, "neonate", "infant"):
        rows = [r for r in records if age is None or r["age"] == age]
        if not rows:
            continue
        lines += [f"**QSM, {'all subjects' if age is None else age + 's'}**", "",
                  "| method | NRMSE | NRMSE, covered region | HFEN | SSIM | XSIM | DGM edge sharpness | DGM mean abs error (ppm) | coverage | seconds |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(_ms([r["qsm"][m].get(k) for r in rows]) for k in QSM_KEYS)
                         + f" | {np.mean([r['seconds'][m] for r in rows]):.1f} |")
        lines.append("")
    names = [reg["name"] for reg in records[0]["qsm"][methods[0]]["regions"]]
    lines += ["**Per-structure mean error (ppm, output minus truth, mean over subjects)**", "",
              "| structure | " + " | ".join(methods) + " |", "| --- |" + " ---: |" * len(methods)]
    for j, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(f"{np.mean([r['qsm'][m]['regions'][j]['mean_error_ppm'] for r in records]):+.4f}" for m in methods) + " |")
    if any(r["masks"] for r in records):
        lines += ["", "**Brain masks against the truth**", "", "| masker | subjects | Dice | mean boundary distance (mm) | HD95 (mm) | seconds |",
                  "| --- | ---: | --- | --- | --- | ---: |"]
    for name in dict.fromkeys(k for r in records for k in r["masks"]):
        rows = [r for r in records if name in r["masks"]]
        key = "mask " + ("BET" if name.startswith("BET") else name)
        lines.append(f"| {name} | {len(rows)} | {_ms([r['masks'][name]['dice'] for r in rows])} | {_ms([r['masks'][name]['mean_mm'] for r in rows])} | "
                     f"{_ms([r['masks'][name]['hd95_mm'] for r in rows])} | {np.mean([r['seconds'][key] for r in rows]):.1f} |")
    paired = [r for r in records if "network" in r["masks"] and "network, mirrored" in r["masks"]]
    if paired:
        better = lambda key, sign: sum(sign * (r["masks"]["network, mirrored"][key] - r["masks"]["network"][key]) > 0 for r in paired)  # noqa: E731
        d = [r["masks"]["network, mirrored"]["dice"] - r["masks"]["network"]["dice"] for r in paired]
        lines += ["", f"Test-time mirroring (`pedq-run --mask-mirror`) against one pass, subject by subject: Dice higher in {better('dice', 1)} of "
                  f"{len(paired)} (mean change {np.mean(d):+.4f}, SD {np.std(d):.4f}), mean boundary distance lower in {better('mean_mm', -1)}, "
                  f"HD95 lower in {better('hd95_mm', -1)}."]
    if records[0]["seg_dice"]:
        checked = [r for r in records if "seg_qc" in r]
        lines += ["", "**Segmentation of PedQ-NET's QSM (Dice per structure)**", "",
                  "`pedq-run`'s segmentation checks (missing, wrong side, fragmented, asymmetric): how many of the subjects' structures "
                  "pass them, and the Dice of those that pass and of those flagged.", "",
                  "| structure | Dice | pass the checks | Dice, passed | Dice, flagged |", "| --- | --- | ---: | --- | --- |"]
        for name in records[0]["seg_dice"]:
            ok = [r["seg_dice"][name] for r in checked if not r["seg_qc"][name]]
            bad = [r["seg_dice"][name] for r in checked if r["seg_qc"][name]]
            lines.append(f"| {name} | {_ms([r['seg_dice'][name] for r in records])} | {len(ok)} of {len(checked)} | "
                         f"{_ms(ok)} | {_ms(bad)} |")
        if checked:
            every = lambda key: [(r[key][n], r["seg_dice"][n]) for r in checked for n in r[key]]  # noqa: E731
            net, truth = every("seg_qc"), every("truth_qc")
            ok = [d for f, d in net if not f]
            bad = [d for f, d in net if f]
            flags = Counter(x for f, _ in net for x in f)
            lines += ["", f"Over all {len(net)} structure segmentations: {len(ok)} pass the checks (mean Dice "
                      f"{np.mean(ok) if ok else float('nan'):.3f}), {len(bad)} are flagged (mean Dice {np.mean(bad) if bad else float('nan'):.3f}; "
                      + (", ".join(f"{k} {v}" for k, v in sorted(flags.items())) or "no flag") + "). "
                      f"The true labels (inside the eroded mask) are flagged in {sum(bool(f) for f, _ in truth)} of {len(truth)}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
