"""Choose the default inversion and background removal on validation heads (never the reported ones).

Every candidate runs as the default pipeline would with it (the shipped models, the masking
network's mask), on validation heads of the sources the networks train on, per age and protocol.
The rule: the candidate that beats TV (on the same mask) on NRMSE and on the deep grey matter's
mean error, and TKD on the deep grey matter's edge sharpness, with values in at least 0.9 of the
brain eroded by 2 mm, in the most cells; ties go to the lower mean NRMSE. Its slope (share of the true contrast) is shown beside.

    .venv/bin/python benchmarks/bench_choose.py [--heads 2] [--sources procedural,icbm]

Writes results/choose.md and .json. The held-out numbers of what is chosen come from bench_heads.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import VALIDATION_SEEDS, machine, model_summary, write_json, write_section  # noqa: E402
from bench_heads import AGES, WORK, _cells, _stat, cached_head, qsm_scores  # noqa: E402

from pedq_deploy.config import MASK_CLOSING_MM, PipelineConfig  # noqa: E402
from pedq_deploy.phantom.sources import PROTOCOL_NAMES, PROTOCOLS, TRAINED_ON  # noqa: E402
from pedq_deploy.runtime.networks import PedqModels, find_models, mask_from_probability  # noqa: E402
from pedq_deploy.runtime.pipeline import run_case  # noqa: E402

CANDIDATES = {
    "pedq": {"inversion": "pedq", "refine": False},
    "pedq + refine": {"inversion": "pedq", "refine": True},
    "tv": {"inversion": "tv"},
    "tv, lambda 1e-4": {"inversion": "tv", "tv_lambda": 1e-4},
    "tv, lambda 1e-3": {"inversion": "tv", "tv_lambda": 1e-3},
    "tkd": {"inversion": "tkd"},
    "lbv + pedq": {"inversion": "pedq", "background": "lbv", "refine": False},
    "lbv + tv": {"inversion": "tv", "background": "lbv"},
    "lbv + pedq + refine": {"inversion": "pedq", "background": "lbv", "refine": True},
    "pedq + refine, mask closed 4 mm": {"inversion": "pedq", "refine": True, "mask_closing": 4.0},
    "pedq + refine, rim filled": {"inversion": "pedq", "refine": True, "fill_rim": True},
    "tv, rim filled": {"inversion": "tv", "fill_rim": True},
}
BASELINE = "pedq + refine"  # the network's map refined by TV on V-SHARP's eroded mask
MIN_COVERAGE = 0.9  # of the brain eroded by 2 mm: a map that leaves its rim out is not won
KEYS = ("nrmse", "dgm_error_ppb", "dgm_edges", "slope", "coverage_2mm")


def effective(settings: dict) -> dict:
    """A candidate's settings with the mask's closing made explicit (the default can change); an
    unclosed mask is left out, as in the scores cached before the closing existed."""
    out = {**settings, "mask_closing": settings.get("mask_closing", MASK_CLOSING_MM)}
    if out["mask_closing"] == 0:
        del out["mask_closing"]
    return out


def score(s, models, probability, settings: dict) -> dict:
    cfg = PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength, **settings)
    mask = mask_from_probability(probability, cfg.mask_threshold, cfg.mask_closing, s.voxel_size)
    t0 = time.perf_counter()
    res = run_case(s.magnitude, s.phase, s.affine, s.voxel_size, cfg, models=models, mask=mask)
    return {**qsm_scores(res.qsm, s), "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", default=",".join(TRAINED_ON))
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--models", default=None)
    a = ap.parse_args()
    found = find_models(a.models)
    models = PedqModels(found)
    # one cached score per head and candidate, keyed by the models and the candidate's settings:
    # adding a candidate scores that candidate only
    cache = WORK / "choose_scores.jsonl"
    models_key = json.dumps(model_summary(found), sort_keys=True)
    key = lambda name: models_key + json.dumps(effective(CANDIDATES[name]), sort_keys=True)  # noqa: E731
    done = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            done[(r["source"], r["protocol"], r["age"], r["seed"], r["key"])] = r["scores"]
    records = []
    for src in a.sources.split(","):
        for prot in a.protocols.split(","):
            for age in AGES:
                for seed in VALIDATION_SEEDS[: a.heads]:
                    head = (src, prot, age, int(seed))
                    todo = [n for n in CANDIDATES if (*head, key(n)) not in done]
                    if todo:
                        s = cached_head(src, prot, age, int(seed))
                        probability = models.mask_probability(s.magnitude, s.voxel_size)
                        for name in todo:
                            scores = score(s, models, probability, CANDIDATES[name])
                            row = {"source": src, "protocol": prot, "age": age, "seed": int(seed), "key": key(name), "scores": scores}
                            with open(cache, "a") as fh:
                                fh.write(json.dumps(row) + "\n")
                            done[(*head, key(name))] = scores
                        print(src, prot, age, seed, {n: round(done[(*head, key(n))]["nrmse"], 3) for n in todo}, flush=True)
                    qsm = {n: done[(*head, key(n))] for n in CANDIDATES}
                    records.append({"source": src, "protocol": prot, "age": age, "seed": int(seed), "qsm": qsm})
    models.close()
    cells = _cells(records)
    wins = {}
    for name in CANDIDATES:
        n = 0
        for _, rs in cells:
            m = lambda c, k: np.mean([r["qsm"][c][k] for r in rs])  # noqa: E731
            n += int(
                m(name, "nrmse") < m("tv", "nrmse")
                and m(name, "dgm_error_ppb") < m("tv", "dgm_error_ppb")
                and m(name, "dgm_edges") > m("tkd", "dgm_edges")
                and m(name, "coverage_2mm") >= MIN_COVERAGE
            )
        wins[name] = n
    mean_nrmse = {name: float(np.mean([r["qsm"][name]["nrmse"] for r in records])) for name in CANDIDATES}
    chosen = max(CANDIDATES, key=lambda n: (wins[n], -mean_nrmse[n]))
    data = {
        "records": records,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "wins": wins,
        "chosen": chosen,
        "candidates": {name: effective(c) for name, c in CANDIDATES.items()},
    }
    write_json("choose", data)
    lines = [
        "## Choosing the default inversion (validation heads)",
        "",
        f"Script: `benchmarks/bench_choose.py` ({data['date']}); validation seeds {VALIDATION_SEEDS[0]}-{VALIDATION_SEEDS[a.heads - 1]}, "
        f"{a.heads} a cell, sources {a.sources}; every candidate on the masking network's mask. Machine: {data['machine']}.",
        "",
        "Cells won: cells (source, protocol, age) where the candidate beats TV on NRMSE and deep grey matter error and TKD "
        f"on deep grey matter edges, and has values in at least {MIN_COVERAGE:g} of the brain eroded by 2 mm, of {len(cells)}; "
        f"ties go to the lower mean NRMSE. **Chosen: {chosen}.**",
        "",
        "| candidate | cells won | NRMSE | DGM error (ppb) | DGM edges | slope | coverage | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in CANDIDATES:
        q = [r["qsm"][name] for r in records]
        lines.append(
            f"| {name} | {wins[name]} | "
            + " | ".join(_stat([x[k] for x in q]) for k in KEYS)
            + f" | {np.mean([x['seconds'] for x in q]):.1f} |"
        )
    if chosen != BASELINE:  # what the choice changes, head by head
        parts = []
        for k in KEYS:
            diff = np.array([r["qsm"][chosen][k] - r["qsm"][BASELINE][k] for r in records])
            parts.append(f"{k} {diff.mean():+.3f} ± {diff.std():.3f}")
        lines += ["", f"Paired by head, {chosen} minus {BASELINE} (mean ± SD): " + ", ".join(parts) + "."]
    lines += [
        "",
        "Per cell (NRMSE / DGM error ppb / DGM edges):",
        "",
        "| source | protocol | age | " + " | ".join(CANDIDATES) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in CANDIDATES) + " |",
    ]
    for (src, prot, age), rs in cells:
        row = []
        for name in CANDIDATES:
            q = [r["qsm"][name] for r in rs]
            row.append(" / ".join(f"{np.mean([x[k] for x in q]):.2f}" for k in ("nrmse", "dgm_error_ppb", "dgm_edges")))
        lines.append(f"| {src} | {PROTOCOL_NAMES[prot]} | {age} | " + " | ".join(row) + " |")
    write_section("choose", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
