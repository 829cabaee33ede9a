"""Shared helpers: timing, machine description, and writing one section of RESULTS.md."""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")

# The phantom seeds the benchmarks draw heads from. Training draws from TrainConfig.train_seeds
# (0-999) and validates on TrainConfig.val_seeds (2000, 2001). Models and settings are chosen on
# VALIDATION_SEEDS; the numbers reported against the targets come from HELD_OUT_SEEDS, which
# nothing is tuned on.
HELD_OUT_SEEDS = range(1000, 1010)
VALIDATION_SEEDS = range(2000, 2010)


def median_time(fn, repeat: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def machine() -> str:
    load = os.getloadavg()
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"load average before the run {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)")


def update_section(name: str, markdown: str) -> None:
    """Replace the section ``name`` of RESULTS.md (between its markers), or append it."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nEvery number here is written by a script in `benchmarks/`; rerun it to refresh its section.\n"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, RESULTS)


def write_records(path: Path, records: list, note: str, models_dir=None) -> None:
    """A benchmark's raw records, the machine note and (``models_dir``) the manifests of the models
    it ran, as JSON at ``path`` (written whole or not at all): a section rebuilt from it later
    describes the models that made the numbers, whatever the folder holds by then."""
    files = [Path(models_dir, f"{role}.json") for role in ("mask", "recon", "seg")] if models_dir is not None else []
    manifests = {f.stem: json.loads(f.read_text()) for f in files if f.is_file()}
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"records": records, "machine": note, "manifests": manifests}, indent=1))
    os.replace(tmp, path)


def read_records(path: Path) -> tuple[list, str, dict | None]:
    """What :func:`write_records` wrote: (records, machine note, manifests by role; None where the
    file predates them)."""
    saved = json.loads(Path(path).read_text())
    return saved["records"], saved["machine"], saved.get("manifests")


def training_chain(training: dict, role: str) -> list[dict]:
    """The training runs behind one exported model, oldest first: each run's manifest record keeps
    the record of the ``role`` model it started from under ``init_from`` (fine-tuning). A network
    that started from random weights in a run that loaded others (``--init-roles``) ends the chain."""
    chain, t = [], training
    while t:
        chain.append(t)
        t = ((t.get("init_from") or {}).get(role) or {}).get("training")
    return chain[::-1]


def chain_totals(chain: list[dict]) -> tuple[int, float, list[str]]:
    """Steps, hours and the hardware (sorted, once each) of the runs of a chain."""
    steps = sum(int(t.get("steps") or 0) for t in chain)
    hours = sum(float(t.get("train_seconds") or 0) for t in chain) / 3600
    return steps, hours, sorted({h for t in chain for h in (t.get("hardware") or [])})


def describe_chain(chain: list[dict]) -> str:
    """'joint run, 2311 steps, 0.10 h on cuda: ...; after 765 steps (1.74 h) on cpu: ... of the runs it started from'."""
    last = chain[-1]
    text = f"{last.get('kind')} run, {last.get('steps')} steps, {(last.get('train_seconds') or 0) / 3600:.2f} h on {', '.join(last.get('hardware') or ['?'])}"
    if len(chain) > 1:
        steps, hours, hw = chain_totals(chain[:-1])
        text += f", after {steps} steps ({hours:.2f} h) on {', '.join(hw) or '?'} in the {len(chain) - 1} run(s) it started from"
    return text


def model_provenance(models_dir, role: str = "recon", manifests: dict | None = None) -> str:
    """describe_chain of the ``role`` model exported in ``models_dir``, from its manifest (or from
    ``manifests[role]``, as :func:`read_records` gives them)."""
    try:
        manifest = manifests[role] if manifests else json.loads((Path(models_dir) / f"{role}.json").read_text())
        raw = manifest["training"]
        return describe_chain(training_chain(raw, role))
    except (OSError, KeyError, ValueError):
        return "provenance unavailable"
