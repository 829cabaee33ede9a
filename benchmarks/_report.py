"""Shared helpers: timing, the machine's description, and where results are written.

Each benchmark writes its own section to ``benchmarks/results/NAME.md`` (and its raw numbers to
``NAME.json`` where a later page is built from them). ``benchmarks/scoreboard.py`` runs the
product's benchmarks and composes ``benchmarks/RESULTS.md`` from their sections.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

from pedq_deploy.phantom.sources import SEEDS

RESULTS_DIR = Path(__file__).with_name("results")

# Models and settings are chosen on VALIDATION_SEEDS; the numbers reported come from
# HELD_OUT_SEEDS, which nothing is tuned on; training draws from SEEDS["train"].
HELD_OUT_SEEDS = SEEDS["held_out"]
VALIDATION_SEEDS = SEEDS["validation"]


def median_time(fn, repeat: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average before the run {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)"
    )


def _atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_section(name: str, markdown: str) -> Path:
    """A benchmark's section (markdown, starting with its ``##`` heading) as results/NAME.md."""
    return _atomic(RESULTS_DIR / f"{name}.md", markdown.rstrip() + "\n")


def write_json(name: str, data) -> Path:
    return _atomic(RESULTS_DIR / f"{name}.json", json.dumps(data, indent=1))


def read_json(name: str):
    return json.loads((RESULTS_DIR / f"{name}.json").read_text())


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


def model_summary(models_dir) -> dict[str, str]:
    """Role -> 'sha256 prefix, training in short' of the models in ``models_dir``."""
    out = {}
    for role in ("mask", "recon", "seg"):
        f = Path(models_dir) / f"{role}.json"
        if f.is_file():
            m = json.loads(f.read_text())
            steps, hours, hw = chain_totals(training_chain(m.get("training") or {}, role))
            out[role] = f"{m.get('sha256', '?')[:12]}: {steps} steps, {hours:.1f} h ({', '.join(hw) or '?'})"
    return out
