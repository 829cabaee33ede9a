"""A whole BIDS study: every GRE/MEGRE run through the pipeline, as independent tasks on Dask.

``run_study`` finds the runs (:func:`pedq_deploy.io.bids.find_runs`), skips those whose derivatives
are complete and were made from the same inputs and parameters (a provenance hash in each run's
``_Chimap.json``), runs the rest on a Dask cluster (a local one sized to the machine's memory by
default, or an existing scheduler) or in this process, and writes the study outputs: the
derivatives' ``dataset_description.json``, ``dseg.tsv``, ``regions.tsv`` (one row per run and deep
grey matter structure) and ``report.html``.

Each run's files are staged and renamed into place when complete, the provenance sidecar last, so a
run killed half-way leaves no file that looks complete; the next study run redoes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import InputError
from ..io.bids import BIDS_VERSION, BidsRun, DerivativeNames, find_runs, participant_ages, write_json_atomic, write_text_atomic

__all__ = ["run_study", "process_run", "run_hash", "model_manifests", "plan_workers"]

REGION_COLUMNS = (
    "participant_id",
    "session_id",
    "run",
    "age_years",
    "label",
    "name",
    "voxels",
    "volume_ml",
    "mean_ppm",
    "std_ppm",
    "reference",
    "qc",
)
_WORKER_MODELS: dict = {}  # (models folder, backend) -> PedqModels: loaded once per worker process


def _models(models_dir, backend: str, wanted: bool):
    from ..runtime.networks import PedqModels, find_models

    found = find_models(models_dir)
    if found is None or not wanted:
        return None
    key = (str(Path(found).resolve()), backend)
    if key not in _WORKER_MODELS:
        _WORKER_MODELS[key] = PedqModels(found, backend=backend)
    return _WORKER_MODELS[key]


def _sha256(path: Path) -> str:
    from ..io import sha256_file

    return sha256_file(path)


def model_manifests(models_dir) -> dict[str, dict]:
    """The manifests (role -> dict) of the models a study would use ({} for none)."""
    from ..runtime.networks import find_models

    found = find_models(models_dir)
    out = {}
    if found is not None:
        for role in ("mask", "recon", "seg"):
            m = Path(found) / f"{role}.json"
            if m.is_file():
                out[role] = json.loads(m.read_text())
    return out


def run_hash(run: BidsRun, overrides: dict, manifests: dict[str, dict], backend: str) -> str:
    """What a run's outputs depend on: its input files, echo times and field strength, the parameters,
    the models (their manifests' checksums, see :func:`model_manifests`) and this version."""
    what = {
        "version": __version__,
        "parameters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(overrides.items())},
        "models": {role: m.get("sha256") for role, m in manifests.items()},
        "backend": backend,
        "echoes": [
            {"magnitude": _sha256(e.magnitude), "phase": _sha256(e.phase), "echo_time": e.echo_time, "field_strength": e.field_strength}
            for e in run.echoes
        ],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _complete(out_root: Path, run: BidsRun, digest: str) -> dict | None:
    """The run's provenance when its outputs are complete and were made with ``digest``, else None."""
    names = DerivativeNames(run)
    side = out_root / names.folder / names.file("chimap_json")
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    prov = meta.get("PedqProvenance") or {}
    if prov.get("hash") != digest:
        return None
    if not all((out_root / f).is_file() for f in prov.get("files", [])):
        return None
    return meta


def process_run(run: BidsRun, out_root: str | Path, overrides: dict, models_dir, backend: str, digest: str) -> dict:
    """Load one run's echoes, run the pipeline, write its derivatives; returns its record."""
    from ..config import PipelineConfig
    from ..io import StagedOutput, save_image
    from ..io.quicklook import quicklook
    from ..metrics import FS_DGM_NAMES, region_stats
    from ..runtime.pipeline import load_inputs, run_case

    t0 = time.perf_counter()
    out_root = Path(out_root)
    mags, phases, notes, props = [], [], [], None
    for e in run.echoes:
        mag, ph, _, p, note, _ = load_inputs(str(e.magnitude), str(e.phase))
        if props is not None and (p.shape != props.shape or not np.allclose(p.affine, props.affine, atol=1e-3)):
            raise InputError(f"echo {e.index} of {run.name} is not on the first echo's grid")
        props = props or p
        mags.append(mag)
        phases.append(ph)
        notes.append(note)
    multi = len(run.echoes) > 1
    magnitude = np.stack(mags, axis=-1) if multi else mags[0]
    phase = np.stack(phases, axis=-1) if multi else phases[0]
    opts = dict(overrides)
    models = _models(
        models_dir, backend, opts.get("inversion", "auto") in ("auto", "pedq") or opts.get("masker", "auto") in ("auto", "network")
    )
    cfg = PipelineConfig(echo_time=run.echo_times if multi else run.echo_times[0], field_strength=run.field_strength, **opts)
    result = run_case(magnitude, phase, props.affine, props.voxel_size, cfg, models=models)
    names = DerivativeNames(run)
    rows = []
    if result.segmentation is not None:
        rows = region_stats(
            result.qsm,
            result.segmentation,
            float(np.prod(props.voxel_size)) / 1000.0,
            FS_DGM_NAMES,
            checks=result.info.get("segmentation_qc", {}),
        )
        for row in rows:  # JSON has no NaN: a structure the network did not find has no values
            for k in ("mean_ppm", "std_ppm"):
                row[k] = None if not np.isfinite(row[k]) else row[k]
    files = [names.folder / names.file(k) for k in ("chimap", "mask", "mask_json", "qcmap", "chimap_json")]
    if result.segmentation is not None:
        files.insert(3, names.folder / names.file("dseg"))
    figure = names.figures / names.file("figure")
    with StagedOutput(out_root / names.figures) as fig:
        quicklook(
            fig.path(figure.name),
            magnitude[..., 0] if multi else magnitude,
            result.mask,
            result.qsm,
            result.segmentation,
            props.affine,
            n_slices=1,
        )
    seconds = time.perf_counter() - t0
    dataset = run.folder.parents[2] if run.session else run.folder.parents[1]
    raw = [f"bids::{Path(f).relative_to(dataset).as_posix()}" for e in run.echoes for f in (e.magnitude, e.phase)]
    sidecar = {
        "Units": "ppm",
        "Description": "Magnetic susceptibility (QSM), referenced to its mean over the V-SHARP-eroded brain mask",
        "Sources": raw,
        "EchoTime": list(run.echo_times) if multi else run.echo_times[0],
        "MagneticFieldStrength": run.field_strength,
        "PedqProvenance": {
            "hash": digest,
            "version": __version__,
            "seconds": round(seconds, 2),
            "files": [str(f) for f in files + [figure]],
            "figure": str(figure),
            "parameters": cfg.parameters(),
            "phase_format": notes,
            "echoes": len(run.echoes),
            "host": os.uname().nodename,
            **result.info,
        },
        "PedqRegions": rows,
    }
    with StagedOutput(out_root / names.folder) as out:
        save_image(out.path(names.file("chimap")), result.qsm, props.affine)
        save_image(out.path(names.file("mask")), result.mask, props.affine, dtype=np.uint8)
        if result.segmentation is not None:
            save_image(out.path(names.file("dseg")), result.segmentation, props.affine, dtype=np.uint8)
        save_image(out.path(names.file("qcmap")), result.qc_map, props.affine)
        out.path(names.file("mask_json")).write_text(
            json.dumps({"Type": "Brain", "Sources": raw, "MaskSource": result.info["mask_source"]}, indent=2)
        )
        # last: its presence marks the run complete
        out.path(names.file("chimap_json")).write_text(json.dumps(sidecar, indent=2))
    return _record(run, sidecar, "done")


def _record(run: BidsRun, sidecar: dict, status: str, reason: str = "") -> dict:
    prov = sidecar.get("PedqProvenance", {}) if sidecar else {}
    return {
        "run": run.name,
        "suffix": run.suffix,
        "subject": run.subject,
        "session": run.session,
        "status": status,
        "reason": reason,
        "seconds": prov.get("seconds"),
        "qc": prov.get("qc"),
        "coverage": prov.get("coverage"),
        "echoes": len(run.echoes),
        "echo_times": list(run.echo_times) if run.echoes and all(e.echo_time for e in run.echoes) else [],
        "inversion": prov.get("inversion"),
        "figure": prov.get("figure"),
        "regions": sidecar.get("PedqRegions", []) if sidecar else [],
        "folder": str(DerivativeNames(run).folder),
    }


def _safe_process(run, out_root, overrides, models_dir, backend, digest) -> dict:
    """process_run on a worker: a failure becomes a record with a one-line reason, never a dead study."""
    try:
        return process_run(run, out_root, overrides, models_dir, backend, digest)
    except InputError as exc:
        return _record(run, {}, "failed", str(exc))
    except MemoryError:
        return _record(run, {}, "failed", "out of memory")
    except Exception as exc:  # a bug: keep the study going, say where
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return _record(run, {}, "failed", f"{type(exc).__name__}: {exc} ({Path(last.filename).name}:{last.lineno})")


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def plan_workers(runs: list[BidsRun], cores: int | None = None, memory: int | None = None) -> tuple[int, int, int]:
    """Workers, threads per worker and memory per worker (bytes) for a local cluster.

    A run needs about 200 bytes per voxel plus 24 per voxel and echo, plus 0.5 GB for the models and
    the worker (measured peaks: 1.1 GB RSS on 256x256x80 with one echo, 1.4 GB with four). Each
    worker gets two threads (a run's FFTs, Numba kernels and network passes use them well: on 2
    cores one worker x 2 threads finished a 20-run study in 0.88x the time of 2 workers x 1 thread,
    ``benchmarks/bench_cohort.py``); workers are as many as the cores (in pairs) and 80% of the
    available memory allow, each limited to its share of the memory."""
    import nibabel as nib

    cores = cores or len(os.sched_getaffinity(0))
    memory = memory or _available_memory()
    need = 1 << 30
    for run in runs[:8]:  # the first few runs' headers are enough to size the cluster
        try:
            vox = int(np.prod(nib.load(str(run.echoes[0].magnitude)).shape[:3]))
        except Exception:
            continue
        need = max(need, 200 * vox + 24 * vox * len(run.echoes) + (512 << 20))
    threads = 2 if cores >= 2 else 1
    workers = max(1, min(cores // threads, len(runs) or 1, int(0.8 * memory // need)))
    # Dask restarts a worker that passes 95% of its limit: give each its share of the memory, not the estimate
    return workers, max(1, cores // workers), max(int(0.9 * memory / workers), need)


def _progress(done: int, total: int, failed: int, quiet: bool) -> None:
    if quiet or total == 0:
        return
    width = 30
    fill = int(width * done / total)
    sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} runs" + (f" ({failed} failed)" if failed else ""))
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _execute(
    todo: list[tuple[BidsRun, str]],
    out_root: Path,
    overrides,
    models_dir,
    backend,
    scheduler: str,
    workers: int | None,
    log: Callable[[str], None],
    quiet: bool,
) -> tuple[list[dict], dict]:
    if not todo:
        return [], {"scheduler": "nothing to run", "workers": 0}
    use_dask = scheduler != "none"
    if use_dask:
        try:
            from dask.distributed import Client, LocalCluster, as_completed
        except ImportError:
            if scheduler not in ("auto",):
                raise InputError("--scheduler needs Dask: pip install 'pedq-deploy[cohort]'") from None
            log("Dask is not installed: running the runs one after another in this process")
            use_dask = False
    records: list[dict] = []
    if not use_dask:
        for i, (run, digest) in enumerate(todo):
            _progress(i, len(todo), sum(r["status"] == "failed" for r in records), quiet)
            records.append(_safe_process(run, out_root, overrides, models_dir, backend, digest))
        _progress(len(todo), len(todo), sum(r["status"] == "failed" for r in records), quiet)
        return records, {"scheduler": "in-process", "workers": 1}
    cluster = None
    if scheduler in ("auto", "local"):
        n, threads, mem = plan_workers([r for r, _ in todo])
        n = workers or n
        threads = max(1, len(os.sched_getaffinity(0)) // n)
        env = {k: str(threads) for k in ("PEDQ_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit=mem, dashboard_address=None, env=env)
        client = Client(cluster)
        info = {"scheduler": "local", "workers": n, "threads_per_worker": threads, "memory_limit_bytes": mem}
        log(f"local Dask cluster: {n} worker(s) x {threads} thread(s), {mem / 2**30:.1f} GB each")
    else:
        client = Client(scheduler)
        info = {"scheduler": scheduler, "workers": len(client.scheduler_info().get("workers", {}))}
        log(f"Dask scheduler {scheduler}: {info['workers']} worker(s)")
    try:
        futures = [
            client.submit(
                _safe_process, run, str(out_root), overrides, models_dir, backend, digest, pure=False, key=f"pedq-{run.name}-{digest[:12]}"
            )
            for run, digest in todo
        ]
        _progress(0, len(futures), 0, quiet)
        by_key = {f.key: run for f, (run, _) in zip(futures, todo)}
        for fut in as_completed(futures):
            try:
                records.append(fut.result())
            except Exception as exc:  # the worker itself died (killed, out of memory): the study goes on
                records.append(_record(by_key[fut.key], {}, "failed", f"its worker died ({type(exc).__name__}: out of memory, or killed)"))
            _progress(len(records), len(futures), sum(r["status"] == "failed" for r in records), quiet)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return records, info


def run_study(
    bids_dir: str | Path,
    out_dir: str | Path,
    overrides: dict,
    *,
    participant_labels=None,
    sessions=None,
    models_dir=None,
    backend: str = "auto",
    scheduler: str = "auto",
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
    quiet: bool = False,
) -> dict:
    """Process a BIDS study into ``out_dir`` (a BIDS derivatives dataset); returns the summary.

    ``scheduler``: ``auto`` (a local Dask cluster when Dask is installed, else in this process),
    ``local``, ``none`` (in this process) or a scheduler address (``tcp://host:8786``).
    """
    from .report import write_report

    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    bids = Path(bids_dir)
    out_root = Path(out_dir)
    if out_root.resolve() == bids.resolve():
        raise InputError("the output folder is the raw dataset itself: write the derivatives elsewhere (e.g. BIDS_DIR/derivatives/pedq)")
    runs = find_runs(bids, participant_labels, sessions)
    seen: dict[str, str] = {}
    for run in runs:  # a T2starw and a MEGRE run with the same entities would write the same derivatives
        if run.name in seen and not run.problem:
            run.problem = f"same entities as the {seen[run.name]} run: give one an acq- entity"
        seen.setdefault(run.name, run.suffix)
    if not runs:
        raise InputError(f"no GRE runs (part-mag / part-phase, _T2starw or _MEGRE) in {bids}")
    ages = participant_ages(bids)
    manifests = model_manifests(models_dir)
    records: list[dict] = []
    todo: list[tuple[BidsRun, str]] = []
    for run in runs:
        if run.problem:
            log(f"skipping {run.name}_{run.suffix}: {run.problem}")
            records.append(_record(run, {}, "not run", run.problem))
            continue
        try:
            digest = run_hash(run, overrides, manifests, backend)
        except OSError as exc:
            records.append(_record(run, {}, "failed", f"cannot read its inputs: {exc.strerror or exc}"))
            continue
        meta = _complete(out_root, run, digest)
        if meta is not None:
            records.append(_record(run, meta, "skipped", "up to date"))
        else:
            todo.append((run, digest))
    _write_dataset_files(out_root, bids, overrides, manifests)
    log(
        f"{len(runs)} run(s): {len(todo)} to process, {sum(r['status'] == 'skipped' for r in records)} up to date, "
        f"{sum(r['status'] == 'not run' for r in records)} not processable"
    )
    done, cluster = _execute(todo, out_root, overrides, models_dir, backend, scheduler, workers, log, quiet)
    records += done
    for r in records:
        r["age_years"] = ages.get((r["subject"], r["session"]), ages.get((r["subject"], None)))
    records.sort(key=lambda r: r["run"])
    _write_regions(out_root, records)
    summary = {
        "tool": "pedq-study",
        "version": __version__,
        "bids_dir": str(bids.resolve()),
        "out_dir": str(out_root.resolve()),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "cluster": cluster,
        "counts": {s: sum(r["status"] == s for r in records) for s in ("done", "skipped", "failed", "not run")},
        "runs": records,
    }
    write_json_atomic(out_root / "logs" / "pedq_study.json", summary)
    write_report(out_root, summary)
    return summary


def _write_dataset_files(out_root: Path, bids: Path, overrides: dict, manifests: dict[str, dict]) -> None:
    from ..metrics import FS_DGM_NAMES

    models = {role: {"sha256": m.get("sha256"), "training_steps": (m.get("training") or {}).get("steps")} for role, m in manifests.items()}
    desc = {
        "Name": "pedq-deploy QSM derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "pedq-deploy",
                "Version": __version__,
                "Description": "GRE magnitude + phase -> brain mask, unwrapping (multi-echo: temporal + weighted fit), V-SHARP, "
                "QSM (PedQ-NET, TKD or TV), deep grey matter segmentation; models: "
                + (", ".join(f"{k} {v['sha256'][:12]}" for k, v in models.items()) or "none"),
            }
        ],
        "SourceDatasets": [{"URL": bids.resolve().as_uri()}],
        "PedqModels": models,
        "PedqParameters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()},
    }
    write_json_atomic(out_root / "dataset_description.json", desc)
    lines = ["index\tname\tabbreviation"] + [f"{k}\t{v}\t{''.join(w[0] for w in v.split('-'))}" for k, v in sorted(FS_DGM_NAMES.items())]
    write_text_atomic(out_root / "dseg.tsv", "\n".join(lines) + "\n")
    write_text_atomic(out_root / ".bidsignore", "*_qcmap.nii.gz\n*_desc-quicklook.png\nregions.tsv\nreport.html\nlogs/\n")


def _write_regions(out_root: Path, records: list[dict]) -> None:
    lines = ["\t".join(REGION_COLUMNS)]
    for r in records:
        if r["status"] not in ("done", "skipped"):
            continue
        for g in r["regions"]:
            age = "n/a" if r.get("age_years") is None else f"{r['age_years']:.4f}"
            num = lambda x: "n/a" if x is None else f"{x:.6f}"  # noqa: E731
            lines.append(
                "\t".join(
                    [
                        f"sub-{r['subject']}",
                        f"ses-{r['session']}" if r["session"] else "n/a",
                        r["run"],
                        age,
                        str(g["label"]),
                        g["name"],
                        str(g["voxels"]),
                        f"{g['volume_ml']:.4f}",
                        num(g["mean_ppm"]),
                        num(g["std_ppm"]),
                        "mean over the V-SHARP-eroded brain mask",
                        g.get("qc", "ok"),
                    ]
                )
            )
    write_text_atomic(out_root / "regions.tsv", "\n".join(lines) + "\n")
