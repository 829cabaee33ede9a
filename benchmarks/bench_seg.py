"""Deep grey matter labels on held-out heads, per source, age and protocol: the segmentation network
against the registered atlas (``segmenter = "atlas"``), both on pedq-run's own mask and map.

For every head, pedq-run runs once as it does by default (the network's labels of PedQ-NET's map on
the masking network's mask); the atlas is registered to that same mask, and any ``--candidate``
models folder's segmentation network labels the same map. Labels are scored where chi has values,
as pedq-run reports them, against the true labels (Dice per structure, left and right averaged).

    .venv/bin/python benchmarks/bench_seg.py [--heads 2] [--validation] [--candidate runs/x_export]

Writes results/seg.json and results/seg.md (or seg_validation.* with --validation: the heads the
default segmenter is chosen on). The heads are benchmarks/_work/heads' (bench_heads.py makes them);
each head's scores are kept in benchmarks/_work/seg_scores.jsonl, keyed by the models, and reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import HELD_OUT_SEEDS, VALIDATION_SEEDS, machine, model_summary, write_json, write_section  # noqa: E402
from bench_heads import AGES, cached_head, dice_of  # noqa: E402

from pedq_deploy.config import PipelineConfig  # noqa: E402
from pedq_deploy.phantom.sources import PROTOCOL_NAMES, PROTOCOLS, SOURCES  # noqa: E402
from pedq_deploy.postprocess.atlas import ATLAS_VERSION, atlas_labels, load_atlas  # noqa: E402
from pedq_deploy.runtime.networks import PedqModels, find_models  # noqa: E402
from pedq_deploy.runtime.pipeline import run_case  # noqa: E402

STRUCTURES = ("thalamus", "caudate", "putamen", "pallidum")
SCORES = Path(__file__).with_name("_work") / "seg_scores.jsonl"


def models_key(models, candidate) -> str:
    """What a head's scores depend on besides the head: every network that ran, and the atlas."""
    shas = [models.manifests[r].raw["sha256"][:12] for r in ("mask", "recon", "seg") if r in models.manifests]
    cand = candidate.manifests["seg"].raw["sha256"][:12] if candidate is not None else "-"
    return f"{'/'.join(shas)}|{cand}|atlas-v{ATLAS_VERSION}"


def load_scores() -> dict:
    out = {}
    if SCORES.is_file():
        for line in SCORES.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a stopped run
            out[r["key"]] = r
    return out


def score_head(source, protocol, age, seed, models, candidate, atlas) -> dict:
    s = cached_head(source, protocol, age, seed)
    cfg = PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength, refine=False)
    t0 = time.perf_counter()
    r = run_case(s.magnitude, s.phase, s.affine, s.voxel_size, cfg, models=models)
    t_pipe = time.perf_counter() - t0
    has_values = r.local_field != 0  # V-SHARP's eroded mask: where chi has values
    out = {"network": dice_of(r.segmentation, s.labels)}
    t0 = time.perf_counter()
    out["atlas"] = dice_of(np.where(has_values, atlas_labels(r.mask, s.affine, atlas=atlas), 0), s.labels)
    t_atlas = time.perf_counter() - t0
    if candidate is not None:
        out["candidate"] = dice_of(candidate.segment(r.qsm, has_values, s.voxel_size), s.labels)
    return {
        "source": source,
        "protocol": protocol,
        "age": age,
        "seed": seed,
        "dice": out,
        "seconds": {"pipeline": t_pipe, "atlas": t_atlas},
    }


def _mean_sd(xs) -> str:
    return f"{np.mean(xs):.3f} ± {np.std(xs):.3f}"


def table(rows: list[dict], methods: list[str], names: dict) -> str:
    head = "| source | protocol | age | " + " | ".join(f"{names[m]}: mean | {names[m]}: lowest" for m in methods) + " |"
    lines = [head, "| --- | --- | --- | " + " | ".join("---: | ---:" for _ in methods) + " |"]
    cells = {}
    for r in rows:
        cells.setdefault((r["source"], r["protocol"], r["age"]), []).append(r)
    for (src, prot, age), rs in cells.items():
        parts = []
        for m in methods:
            means = [np.mean(list(r["dice"][m].values())) for r in rs]
            lows = [min(r["dice"][m].values()) for r in rs]
            parts.append(f"{_mean_sd(means)} | {_mean_sd(lows)}")
        lines.append(f"| {src} | {PROTOCOL_NAMES[prot]} | {age} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def per_structure(rows: list[dict], methods: list[str], names: dict) -> str:
    lines = [
        "| source | method | " + " | ".join(STRUCTURES) + " | mean |",
        "| --- | --- | " + " | ".join("---:" for _ in STRUCTURES) + " | ---: |",
    ]
    for src in dict.fromkeys(r["source"] for r in rows):
        rs = [r for r in rows if r["source"] == src]
        for m in methods:
            vals = [np.mean([np.mean([v for k, v in r["dice"][m].items() if st in k.lower()]) for r in rs]) for st in STRUCTURES]
            mean = np.mean([np.mean(list(r["dice"][m].values())) for r in rs])
            lines.append(f"| {src} | {names[m]} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {mean:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--heads", default="2", help="heads per source, protocol and age: N, or SOURCE=N,... (e.g. icbm=2,cvs=1)")
    ap.add_argument("--validation", action="store_true", help="validation heads (to choose on) instead of held-out ones")
    ap.add_argument("--candidate", default=None, help="a models folder whose segmentation network is scored too")
    ap.add_argument("--candidate-name", default="candidate", help="its column's name (e.g. previous)")
    a = ap.parse_args(argv)
    pool = list(VALIDATION_SEEDS if a.validation else HELD_OUT_SEEDS)
    try:
        per = {k: int(v) for k, v in (x.split("=") for x in a.heads.split(","))} if "=" in a.heads else {}
        default_n = 0 if per else int(a.heads)
    except ValueError:
        ap.error(f"--heads: N or SOURCE=N,..., got {a.heads!r}")
    seeds_of = {src: pool[: per.get(src, default_n)] for src in a.sources.split(",")}
    seeds = sorted({x for v in seeds_of.values() for x in v})
    folder = find_models(None)
    models = PedqModels(folder)
    candidate = None
    if a.candidate:
        candidate = PedqModels(a.candidate)
        if not candidate.has("seg"):
            raise SystemExit(f"bench_seg: no segmentation network in {a.candidate}")
    atlas = load_atlas()
    rows, cached, mkey = [], load_scores(), models_key(models, candidate)
    for src in a.sources.split(","):
        for prot in a.protocols.split(","):
            for age in AGES:
                for seed in seeds_of[src]:
                    key = f"{src}|{prot}|{age}|{seed}|{mkey}"
                    r = cached.get(key)
                    if r is None:
                        r = {"key": key, **score_head(src, prot, age, seed, models, candidate, atlas)}
                        SCORES.parent.mkdir(parents=True, exist_ok=True)
                        with SCORES.open("a") as f:
                            f.write(json.dumps(r) + "\n")
                    rows.append(r)
                    print(
                        f"{src} {prot} {age} {seed}: "
                        + ", ".join(f"{m} {np.mean(list(d.values())):.3f}" for m, d in r["dice"].items())
                        + f" (atlas {r['seconds']['atlas']:.1f} s)",
                        flush=True,
                    )
    methods = ["network", "atlas"] + (["candidate"] if candidate else [])
    names = {"network": "network", "atlas": "atlas", "candidate": a.candidate_name}
    name = "seg_validation" if a.validation else "seg"
    summary = model_summary(folder)
    cand = f" {a.candidate_name.capitalize()}: {a.candidate} ({model_summary(a.candidate).get('seg', '?')})." if candidate else ""
    which = "validation" if a.validation else "held-out"
    md = f"""## Deep grey matter labels: segmentation network and registered atlas ({which} heads)

Script: `benchmarks/bench_seg.py{" --validation" if a.validation else ""}` ({time.strftime("%Y-%m-%d")}).
{len(rows)} {which} heads, seeds {", ".join(map(str, seeds))}; heads a cell: {", ".join(f"{k} {len(v)}" for k, v in seeds_of.items())}. Machine: {machine()}.
Segmentation network: {summary.get("seg", "?")}.{cand}

Both label pedq-run's own map on its own mask (the masking network's), scored where chi has values
against the true labels. The atlas is the Harvard-Oxford nuclei on the ICBM152 brain, registered
affinely to the mask. The `icbm` heads are built from that same atlas, so on them it is judged on
its own labels; the `cvs` heads (FreeSurfer's labelling of another template) are the fair test.
The two labellings agree at Dice 0.73-0.87 per structure on their common MNI grid (mean 0.80): on
`cvs` heads that is about the most an atlas, or a network learnt on `icbm` heads, can reach.

Mean Dice over the 8 structures, and the lowest structure's (mean ± SD over the heads of a cell):

{table(rows, methods, names)}

Per structure (left and right averaged), per source:

{per_structure(rows, methods, names)}

The atlas takes {np.mean([r["seconds"]["atlas"] for r in rows]):.1f} s a head on average (registration and labels).
"""
    write_json(name, rows)
    print(write_section(name, md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
