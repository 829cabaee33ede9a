"""The scoreboard: runs the product's benchmarks, one after another, and writes benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/scoreboard.py              # everything (about an hour on 2 cores); run it alone
    .venv/bin/python benchmarks/scoreboard.py --compose    # only rebuild RESULTS.md from benchmarks/results/
    .venv/bin/python benchmarks/scoreboard.py --only heads # rerun one benchmark, then rebuild

RESULTS.md holds the current numbers only, one section per question: accuracy per source of heads,
age and protocol; masking; segmentation; speed per stage and against peers; reliability. Each
section names its script, heads, machine and date. How to read them: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _report import RESULTS_DIR, read_json  # noqa: E402

RESULTS = HERE / "RESULTS.md"
README = HERE.parent / "README.md"
MARKERS = ("<!-- scoreboard:start -->", "<!-- scoreboard:end -->")  # the README's copy of the summary
# name -> the command that writes results/NAME.md (and NAME.json where the summary reads it)
BENCHMARKS = {
    "heads": [str(HERE / "bench_heads.py")],
    "seg": [str(HERE / "bench_seg.py")],
    "stages": [str(HERE / "bench_stages.py")],
    "inference": [str(HERE / "bench_inference.py")],
    "reliability": [str(HERE / "bench_reliability.py")],
}


def _mean(values) -> float:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def summary() -> list[str]:
    """The headline table: the default pipeline against TV given the true mask, per cell."""
    try:
        heads = read_json("heads")
    except OSError:
        return ["(no held-out heads scored yet: run `benchmarks/bench_heads.py`)"]
    from bench_heads import _cells

    from pedq_deploy.phantom.sources import PROTOCOL_NAMES

    lines = [
        "| source | protocol | age | NRMSE: pedq-run / TV, true mask | DGM error (ppb) | slope | coverage | mask Dice: network / BET | "
        "segmentation Dice |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | ---: |",
    ]
    for (src, prot, age), rs in _cells(heads["records"]):
        q = lambda m, k: _mean([r["qsm"][m][k] for r in rs])  # noqa: E731
        seg = _mean([np.mean(list(r["segmentation"].values())) for r in rs if r["segmentation"]])
        lines.append(
            f"| {src} | {PROTOCOL_NAMES[prot]} | {age} | {q('pedq-run', 'nrmse'):.3f} / {q('TV, true mask', 'nrmse'):.3f} | "
            f"{q('pedq-run', 'dgm_error_ppb'):.1f} / {q('TV, true mask', 'dgm_error_ppb'):.1f} | "
            f"{q('pedq-run', 'slope'):.2f} / {q('TV, true mask', 'slope'):.2f} | {q('pedq-run', 'coverage_2mm'):.2f} | "
            f"{_mean([r['masks']['pedq-run']['dice'] for r in rs]):.3f} / {_mean([r['masks'].get('BET', {}).get('dice') for r in rs]):.3f} | "
            f"{seg:.2f} |"
        )
    lines += [
        "",
        f"Held-out heads scored {heads['date']} (`benchmarks/bench_heads.py`; {len(heads['records'])} heads, "
        f"{heads['heads_per_cell']} a cell). In each pair the first number is the default pipeline's, the second TV's given the true "
        "brain mask (the conventional method at its best), except for the masks (the masking network's Dice / BET's).",
    ]
    try:
        st = read_json("stages")
        auto = st["end_to_end"].get("auto")
        if auto:
            lines += [
                "",
                f"Speed: `pedq-run` with its defaults on a 256x256x80 scan took {auto['wall_s']:.1f} s end to end on 2 CPU cores "
                f"({auto['ran']}; peak memory {auto['peak_rss_mb']:.0f} MB), measured {st['date']} (`benchmarks/bench_stages.py`).",
            ]
    except OSError:
        pass
    return lines


def compose() -> None:
    sections = [(RESULTS_DIR / f"{name}.md") for name in BENCHMARKS]
    parts = [
        "# Where pedq-deploy stands",
        "",
        f"Written by `benchmarks/scoreboard.py` ({time.strftime('%Y-%m-%d')}) from the sections each benchmark writes to "
        "`benchmarks/results/`. Every number is from the models shipped in `export/`, on simulated heads that no network was "
        "trained on and no setting was chosen on (held-out seeds), reported per source of heads: a result that holds on one "
        "source only is not a result. How to read the tables: `docs/benchmarks.md`.",
        "",
        "## Summary",
        "",
        *summary(),
        "",
    ]
    # design questions the issues ask to see beside the scoreboard: the masking network's transfer
    # gap (held-out heads) and the choices made on validation heads
    for extra in ("mask_transfer", "mask_transfer_validation", "mask_closing_validation", "choose", "seg_validation"):
        if (RESULTS_DIR / f"{extra}.md").is_file():
            sections.append(RESULTS_DIR / f"{extra}.md")
    for path in sections:
        if path.is_file():
            parts += [path.read_text().rstrip(), ""]
        else:
            cmd = " ".join(str(Path(c).relative_to(HERE.parent)) if c.startswith(str(HERE)) else c for c in BENCHMARKS[path.stem])
            parts += [f"## {path.stem}", "", f"(not run yet: `{cmd}`)", ""]
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(RESULTS)
    print(f"scoreboard: wrote {RESULTS} ({len(parts)} blocks)")
    text = README.read_text()
    if MARKERS[0] in text and MARKERS[1] in text:
        head, rest = text.split(MARKERS[0], 1)
        tail = rest.split(MARKERS[1], 1)[1]
        tmp = README.with_suffix(".md.tmp")
        tmp.write_text(head + MARKERS[0] + "\n" + "\n".join(summary()) + "\n" + MARKERS[1] + tail)
        tmp.replace(README)
        print(f"scoreboard: updated the summary in {README}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compose", action="store_true", help="only rebuild RESULTS.md from benchmarks/results/")
    ap.add_argument("--only", help="comma-separated benchmarks to run (" + ", ".join(BENCHMARKS) + ")")
    a = ap.parse_args()
    if not a.compose:
        names = a.only.split(",") if a.only else list(BENCHMARKS)
        unknown = sorted(set(names) - set(BENCHMARKS))
        if unknown:
            ap.error(f"unknown benchmarks: {', '.join(unknown)}")
        for name in names:
            print(f"scoreboard: {name} ...", flush=True)
            subprocess.run([sys.executable, *BENCHMARKS[name]], check=True)
    compose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
