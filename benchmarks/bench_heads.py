"""Accuracy, masking and segmentation on held-out heads, per source of heads, age and protocol.

For every head: the default pipeline exactly as ``pedq-run`` runs it (shipped models, ``auto``
everywhere), TV and TKD on the mask that pipeline made, and TV on the true brain mask (the bar a
reconstruction network has to clear); the masking network, the classic masker and BET
(``brainextractor``) against the true brain mask; the segmentation against the true labels.
Maps are scored as QSM-CI scores them: over the whole true brain mask, uncovered voxels as zero.

    .venv/bin/python benchmarks/bench_heads.py [--heads 3] [--sources ...] [--protocols ...] [--validation]

Writes results/heads.json (every head's scores) and results/heads.md (the tables), or
results/heads_validation.* with --validation (the heads choices are made on). Heads already scored
with the same models are kept in benchmarks/_work/ and skipped on a rerun (--fresh redoes them).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import HELD_OUT_SEEDS, RESULTS_DIR, VALIDATION_SEEDS, machine, model_summary, write_json, write_section  # noqa: E402

from pedq_deploy import metrics as M  # noqa: E402
from pedq_deploy.config import PipelineConfig  # noqa: E402
from pedq_deploy.phantom.sources import PROTOCOL_NAMES, PROTOCOLS, SOURCES, make_head  # noqa: E402
from pedq_deploy.preprocess import classic_mask  # noqa: E402
from pedq_deploy.runtime.networks import PedqModels, find_models  # noqa: E402
from pedq_deploy.runtime.pipeline import run_case  # noqa: E402

WORK = Path(__file__).with_name("_work")
METHODS = ("pedq-run", "TV", "TKD", "TV, true mask")
AGES = ("neonate", "infant")
SNR = 100.0


def bet_mask(magnitude, affine):
    """BET as ``brainextractor`` reimplements it, or None where it is not installed."""
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


def dice_of(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of each deep grey matter structure (FreeSurfer numbers), by its FreeSurfer name."""
    return {name: M.dice(labels == k, truth == k) for k, name in M.FS_DGM_NAMES.items()}


def qsm_scores(chi, s) -> dict:
    sc = M.score_qsm(chi, s.chi, s.brain_mask, s.labels)
    return {
        "nrmse": sc["nrmse"],
        "hfen": sc["hfen"],
        "xsim": sc["xsim"],
        "slope": sc["slope"],
        "coverage": sc["coverage"],
        "coverage_2mm": M.eroded_coverage(chi, s.brain_mask, s.voxel_size, 2.0),
        "dgm_error_ppb": 1e3 * sc["dgm_mean_abs_error_ppm"],
        "dgm_edges": sc["dgm_edge_sharpness"],
    }


def mask_scores(mask, brain) -> dict:
    mask = np.asarray(mask, bool)
    return {
        "dice": M.dice(mask, brain),
        "outside": float((mask & ~brain).sum() / brain.sum()),
        "missed": float((brain & ~mask).sum() / brain.sum()),
    }


def cached_head(source: str, protocol: str, age: str, seed: int):
    """The simulated head, made once and kept in benchmarks/_work/heads (it depends on the simulator
    alone, not on the models): re-scoring new models costs the pipeline's time, not the simulation's."""
    import dataclasses

    from pedq_deploy.phantom.simulate import Subject

    path = WORK / "heads" / f"{source}_{protocol}_{age}_{seed}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            fields = {f.name: z[f.name] for f in dataclasses.fields(Subject) if f.name in z.files}
            params = json.loads(str(z["params_json"]))
        return Subject(
            **{
                **fields,
                "voxel_size": tuple(float(x) for x in fields["voxel_size"]),
                "echo_time": float(fields["echo_time"]),
                "field_strength": float(fields["field_strength"]),
                "params": params,
                "total_field": None,
            }
        )
    s = make_head(source, seed, age, protocol, snr=SNR)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f.name: np.asarray(getattr(s, f.name)) for f in dataclasses.fields(Subject) if f.name not in ("params", "total_field")}
    tmp = path.with_name(path.stem + ".partial.npz")
    np.savez_compressed(tmp, params_json=json.dumps(s.params), **arrays)
    tmp.replace(path)
    return s


def cached_bet(source: str, protocol: str, age: str, seed: int, s):
    """BET's mask of the head, kept beside it in benchmarks/_work/heads (BET does not change with our
    models), and the seconds it took (None when read back); (None, None) where BET is not installed."""
    path = WORK / "heads" / f"{source}_{protocol}_{age}_{seed}_bet.npy"
    if path.is_file():
        return np.load(path), None
    t0 = time.perf_counter()
    b = bet_mask(s.magnitude, s.affine)
    if b is None:
        return None, None
    np.save(path, b)
    return b, time.perf_counter() - t0


def score_head(source: str, protocol: str, age: str, seed: int, models, bet: bool) -> dict:
    t0 = time.perf_counter()
    s = cached_head(source, protocol, age, seed)
    t_sim = time.perf_counter() - t0
    cfg = lambda **kw: PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength, **kw)  # noqa: E731
    t0 = time.perf_counter()
    default = run_case(s.magnitude, s.phase, s.affine, s.voxel_size, cfg(), models=models)
    t_default = time.perf_counter() - t0
    maps = {"pedq-run": default.qsm}
    # the peers as the textbooks run them: on the mask background removal eroded, whatever pedq-run's defaults
    for name, inv in (("TV", "tv"), ("TKD", "tkd")):
        maps[name] = run_case(s.magnitude, s.phase, s.affine, s.voxel_size, cfg(inversion=inv, fill_rim=False), mask=default.mask).qsm
    maps["TV, true mask"] = run_case(
        s.magnitude, s.phase, s.affine, s.voxel_size, cfg(inversion="tv", fill_rim=False), mask=s.brain_mask
    ).qsm
    masks = {"pedq-run": default.mask}
    t0 = time.perf_counter()
    masks["classic"] = classic_mask(s.magnitude, s.voxel_size)
    t_classic = time.perf_counter() - t0
    t_bet = None
    if bet:
        b, t_bet = cached_bet(source, protocol, age, seed, s)
        if b is not None:
            masks["BET"] = b
    seg = dice_of(default.segmentation, s.labels) if default.segmentation is not None else {}
    return {
        "source": source,
        "protocol": protocol,
        "age": age,
        "seed": seed,
        "tilt_deg": s.params["tilt_deg"],
        "inversion": default.info["inversion"],
        "refined": default.info["refined"],
        "mask_source": default.info["mask_source"],
        "qsm": {k: qsm_scores(v, s) for k, v in maps.items()},
        "masks": {k: mask_scores(v, s.brain_mask) for k, v in masks.items()},
        "segmentation": seg,
        "seconds": {"simulate": t_sim, "pedq-run": t_default, "classic mask": t_classic, "BET": t_bet, "stages": default.info["timings_s"]},
    }


def _cache_key(models_dir) -> str:
    parts = [
        json.loads((Path(models_dir) / f"{r}.json").read_text()).get("sha256", "")
        for r in ("mask", "recon", "seg")
        if models_dir is not None and (Path(models_dir) / f"{r}.json").is_file()
    ]
    # the default settings too: a new default is a new pedq-run
    defaults = json.dumps(PipelineConfig(echo_time=0.01, field_strength=3.0).parameters(), sort_keys=True)
    return hashlib.sha256(("".join(parts) + defaults).encode()).hexdigest()[:16]


def _stat(values) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if not v.size:
        return "n/a"
    return f"{v.mean():.3f} ± {v.std():.3f}" if v.size > 1 else f"{v.mean():.3f}"


def _cells(records):
    keys = []
    for r in records:
        k = (r["source"], r["protocol"], r["age"])
        if k not in keys:
            keys.append(k)
    return [(k, [r for r in records if (r["source"], r["protocol"], r["age"]) == k]) for k in keys]


def render(data: dict, title: str) -> str:
    recs = data["records"]
    lines = [
        f"## {title}",
        "",
        f"Script: `benchmarks/bench_heads.py{' --validation' if data['validation'] else ''}` ({data['date']}). "
        f"{len(recs)} {'validation' if data['validation'] else 'held-out'} heads, seeds {data['seeds']}, "
        f"SNR {SNR:g}, tilted 0-30 degrees to B0; {data['heads_per_cell']} a cell. Machine: {data['machine']}. "
        "Models: " + "; ".join(f"{k} {v}" for k, v in data["models"].items()) + ".",
        "",
        "### Susceptibility maps",
        "",
        "Scored over the whole true brain mask, voxels a method left without values counting as zero (QSM-CI's rule). "
        "NRMSE and HFEN: 0 is perfect, 1 as large as the truth. DGM error: mean absolute error of the 8 deep grey matter "
        "structures' mean chi (ppb). DGM edges: edge sharpness at their boundaries (1 = the truth's). Slope: least-squares slope of "
        "the map on the truth (1 = the truth's contrast). Coverage: share of the brain eroded by 2 mm that has values. "
        "pedq-run: the default pipeline; TV and TKD on the mask pedq-run made; TV, true mask: TV given the true brain mask. "
        "Mean ± SD over the heads.",
        "",
        "| source | protocol | age | method | NRMSE | HFEN | DGM error (ppb) | DGM edges | slope | coverage |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (src, prot, age), rs in _cells(recs):
        for m in METHODS:
            q = [r["qsm"][m] for r in rs]
            lines.append(
                f"| {src} | {PROTOCOL_NAMES[prot]} | {age} | {m}"
                + "".join(
                    f" | {_stat([x[k] for x in q])}" for k in ("nrmse", "hfen", "dgm_error_ppb", "dgm_edges", "slope", "coverage_2mm")
                )
                + " |"
            )
    # refined: recorded by newer runs; else what refine = auto does (PedQ-NET with a segmentation)
    ran = sorted(
        {
            r["inversion"] + (", refined by guided TV" if r.get("refined", r["inversion"] == "pedq" and bool(r["segmentation"])) else "")
            for r in recs
        }
    )
    lines += [
        "",
        f"pedq-run's defaults (`inversion = auto`, `refine = auto`) ran: {'; '.join(ran)}.",
        "",
        "### Brain masks",
        "",
        "Dice against the true brain mask; outside: the mask's voxels outside the brain, as a share of the brain (leaks into "
        "sinuses, scalp or neck, which V-SHARP cannot remove); missed: the share of the brain left out.",
        "",
        "| source | protocol | age | masking network: Dice | outside | missed | classic: Dice | BET: Dice |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (src, prot, age), rs in _cells(recs):
        net = [r["masks"]["pedq-run"] for r in rs]
        lines.append(
            f"| {src} | {PROTOCOL_NAMES[prot]} | {age} | {_stat([x['dice'] for x in net])} | {_stat([x['outside'] for x in net])} | "
            f"{_stat([x['missed'] for x in net])} | {_stat([r['masks']['classic']['dice'] for r in rs])} | "
            f"{_stat([r['masks'].get('BET', {}).get('dice') for r in rs])} |"
        )
    src_of = sorted({r["mask_source"] for r in recs})
    lines += ["", f"pedq-run's mask came from: {', '.join(src_of)}."]
    seg_recs = [r for r in recs if r["segmentation"]]
    if seg_recs:
        names = list(M.FS_DGM_NAMES.values())
        lines += [
            "",
            "### Deep grey matter segmentation",
            "",
            "Dice of the segmentation network's labels (on pedq-run's own map and mask) against the true labels: the mean over "
            "the 8 structures, the lowest structure, and each structure (left and right averaged).",
            "",
            "| source | protocol | age | mean Dice | lowest | thalamus | caudate | putamen | pallidum |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for (src, prot, age), rs in _cells(seg_recs):
            per = {n: [r["segmentation"][n] for r in rs] for n in names}
            pair = lambda s: [(a + b) / 2 for a, b in zip(per[f"Left-{s}"], per[f"Right-{s}"])]  # noqa: E731
            lines.append(
                f"| {src} | {PROTOCOL_NAMES[prot]} | {age} | {_stat([np.mean([r['segmentation'][n] for n in names]) for r in rs])} | "
                f"{_stat([min(r['segmentation'].values()) for r in rs])} | "
                + " | ".join(_stat(pair(s)) for s in ("Thalamus", "Caudate", "Putamen", "Pallidum"))
                + " |"
            )
    secs = [r["seconds"]["pedq-run"] for r in recs]
    lines += [
        "",
        f"pedq-run's pipeline took {np.mean(secs):.1f} s a head on average here (arrays in memory, no file I/O; "
        "on a machine that may have been busy: the speed section has the measured stage times).",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--ages", default=",".join(AGES))
    ap.add_argument("--heads", type=int, default=3, help="heads per source, protocol and age")
    ap.add_argument("--models", default=None, help="models folder (default: as pedq-run finds them)")
    ap.add_argument("--validation", action="store_true", help="validation heads (to choose on) instead of held-out ones")
    ap.add_argument("--no-bet", action="store_true", help="skip BET (about 30 s a head)")
    ap.add_argument("--fresh", action="store_true", help="score every head again")
    ap.add_argument("--name", default=None, help="results name (default heads, or heads_validation)")
    a = ap.parse_args()
    seeds = (VALIDATION_SEEDS if a.validation else HELD_OUT_SEEDS)[: a.heads]
    name = a.name or ("heads_validation" if a.validation else "heads")
    found = find_models(a.models)
    models = PedqModels(found) if found is not None else None
    key = _cache_key(found)
    WORK.mkdir(exist_ok=True)
    cache = WORK / f"{name}.jsonl"
    done = {}
    if cache.is_file() and not a.fresh:
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            if r.get("models_key") == key:
                done[(r["source"], r["protocol"], r["age"], r["seed"])] = r
    note = machine()
    records = []
    for src in a.sources.split(","):
        for prot in a.protocols.split(","):
            for age in a.ages.split(","):
                for seed in seeds:
                    k = (src, prot, age, int(seed))
                    if k not in done:
                        t0 = time.perf_counter()
                        r = score_head(src, prot, age, int(seed), models, not a.no_bet)
                        r["models_key"] = key
                        with open(cache, "a") as fh:
                            fh.write(json.dumps(r) + "\n")
                        done[k] = r
                        q = r["qsm"]
                        print(
                            f"{src} {prot} {age} {seed}: NRMSE pedq-run {q['pedq-run']['nrmse']:.3f} TV {q['TV']['nrmse']:.3f} "
                            f"TV-true {q['TV, true mask']['nrmse']:.3f}; mask Dice {r['masks']['pedq-run']['dice']:.3f} "
                            f"({time.perf_counter() - t0:.0f} s)",
                            flush=True,
                        )
                    records.append(done[k])
    if models is not None:
        models.close()
    data = {
        "records": records,
        "machine": note,
        "date": time.strftime("%Y-%m-%d"),
        "validation": a.validation,
        "seeds": f"{seeds[0]}-{seeds[-1]}",
        "heads_per_cell": a.heads,
        "models": model_summary(found) if found else {},
    }
    write_json(name, data)
    title = "Validation heads (for choosing)" if a.validation else "Accuracy on held-out heads"
    write_section(name, render(data, title))
    print((RESULTS_DIR / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
