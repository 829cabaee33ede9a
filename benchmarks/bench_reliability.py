"""Reliability: fuzzed inputs, tampered models, killed runs, a full disk, the MRD server under load,
and the dependency audit. Writes benchmarks/RELIABILITY.md.

``.venv/bin/python benchmarks/bench_reliability.py [--fuzz N] [--kills N] [--scans N]``
(needs the dev extra: hypothesis, ismrmrd; root for the tmpfs of the full-disk case).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from _report import machine, write_section  # noqa: E402

OUT = Path(__file__).with_name("RELIABILITY.md")


def _reason(text: str) -> str:
    msg = text.strip().splitlines()[-1] if text.strip() else ""
    msg = re.sub(r"^pedq-run: error: ", "", msg)
    msg = re.sub(r"/[^\s]*", "PATH", msg)
    msg = re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "N", msg)
    return msg[:90]


# ---- 1. fuzzed inputs ---------------------------------------------------------------------------
def fuzz_inputs(n_sidecar: int) -> tuple[list, collections.Counter]:
    from test_fuzz import _apply_header, _rewrite, run_case

    cases = []
    for kind, values in (
        ("pixdim", [0.0, -1.0, float("nan"), float("inf"), 1e-9, 1e6]),
        ("srow", [float("nan"), 0.0, float("inf")]),
        ("dtype", [np.complex64, np.uint8, np.int16, np.float64, np.int64, np.uint16]),
        ("4d", [1, 2]),
        ("scale", [0.0, float("nan"), 1e30, -1.0]),
    ):
        for v, target in itertools.product(values, ("mag", "phase")):
            cases.append((f"header {kind}={getattr(v, '__name__', v)} ({target})", _apply_header(kind, v, target)))
    for cut, target in itertools.product([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98], ("mag", "phase")):

        def trunc(paths, cut=cut, target=target):
            raw = paths[target].read_bytes()
            paths[target].write_bytes(raw[: int(len(raw) * cut)])

        cases.append((f"truncated gzip at {cut:.0%} ({target})", trunc))
    rng = np.random.default_rng(0)
    pool = [None, True, False, -1, 0, 3, 4.92, 25.0, 0.02, float("nan"), float("inf"), "", "0.02", [0.02], {"a": 1}]
    for i in range(n_sidecar):
        te, b0 = pool[rng.integers(len(pool))], pool[rng.integers(len(pool))]
        target = ("mag", "phase")[i % 2]

        def side(paths, te=te, b0=b0, target=target):
            p = paths[target].with_name(paths[target].name.replace(".nii.gz", ".json"))
            p.write_text(json.dumps({"EchoTime": te, "MagneticFieldStrength": b0}))

        cases.append((f"sidecar EchoTime={te!r} MagneticFieldStrength={b0!r} ({target})", side))
    for scale in (5.0, 100.0, 1e6):
        cases.append((f"phase x{scale:g}", lambda p, s=scale: _rewrite(p["phase"], lambda d, h: ((d * s).astype(np.float32), h))))
    cases.append(("magnitude all zero", lambda p: _rewrite(p["mag"], lambda d, h: (np.zeros_like(d), h))))
    cases.append(("phase with NaN", lambda p: _rewrite(p["phase"], lambda d, h: (np.where(d > 0.5, np.nan, d).astype(np.float32), h))))

    def huge(paths):
        import gzip

        import nibabel as nib

        hdr = nib.load(str(paths["mag"])).header.copy()
        hdr["dim"][1:4] = (30000, 30000, 30000)
        paths["mag"].write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 404))

    cases.append(("claimed 30000^3 voxels", huge))
    rows, tally = [], collections.Counter()
    for name, fn in cases:
        tmp = Path(tempfile.mkdtemp(prefix="pedq-fuzz-"))
        t0 = time.perf_counter()
        try:
            code, text = run_case(tmp, fn)
            outcome = "ran (exit 0)" if code == 0 else "refused (exit 2, one line)"
            reason = "" if code == 0 else _reason(text)
        except AssertionError as exc:
            outcome, reason = "FAILED the contract", str(exc).splitlines()[0][:120]
        except Exception as exc:  # noqa: BLE001 - a crash is what we are counting
            outcome, reason = "FAILED the contract", f"{type(exc).__name__}: {exc}"[:120]
        shutil.rmtree(tmp, ignore_errors=True)
        rows.append((name, outcome, reason, time.perf_counter() - t0))
        tally[outcome] += 1
    return rows, tally


# ---- 2. tampered models ---------------------------------------------------------------------------
def tampered_models(models: Path, scan: Path) -> list:
    cases = {}

    def flip(d):
        data = bytearray((d / "recon.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (d / "recon.onnx").write_bytes(bytes(data))

    cases["recon.onnx: one byte flipped (sha256 mismatch)"] = flip
    cases["recon.onnx: truncated"] = lambda d: (d / "recon.onnx").write_bytes((d / "recon.onnx").read_bytes()[:1000])
    cases["recon.json: missing"] = lambda d: (d / "recon.json").unlink()
    cases["recon.json: not JSON"] = lambda d: (d / "recon.json").write_text("{not json")

    def patch(d):
        m = json.loads((d / "recon.json").read_text())
        m["patch"] = [m["patch"][0] * 2] * 3
        (d / "recon.json").write_text(json.dumps(m))

    cases["recon.json: another patch size"] = patch

    def fmt(d):
        m = json.loads((d / "seg.json").read_text())
        m["format"] = "something/9"
        (d / "seg.json").write_text(json.dumps(m))

    cases["seg.json: unknown format"] = fmt
    rows = []
    for name, fn in cases.items():
        tmp = Path(tempfile.mkdtemp(prefix="pedq-models-"))
        d = tmp / "models"
        shutil.copytree(models, d, ignore=shutil.ignore_patterns("nnunet_tv", "__pycache__", "*.py", "*.md"))
        fn(d)
        t0 = time.perf_counter()
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pedq_deploy.cli.run",
                str(scan / "magnitude.nii.gz"),
                str(scan / "phase.nii.gz"),
                "-o",
                str(tmp / "out"),
                "--models",
                str(d),
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        ok = r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1 and not (tmp / "out").exists()
        rows.append(
            (
                name,
                "refused (exit 2, one line, no output)" if ok else f"FAILED (exit {r.returncode})",
                _reason(r.stderr),
                time.perf_counter() - t0,
            )
        )
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


# ---- 3. kills and a full disk ------------------------------------------------------------------------
def kills(scan: Path, n: int) -> tuple[list, float]:
    import nibabel as nib

    base = [
        sys.executable,
        "-m",
        "pedq_deploy.cli.run",
        str(scan / "magnitude.nii.gz"),
        str(scan / "phase.nii.gz"),
        "--inversion",
        "tv",
        "--models",
        "none",
        "-q",
        "--overwrite",
    ]
    work = Path(tempfile.mkdtemp(prefix="pedq-kill-"))
    t0 = time.perf_counter()
    subprocess.run(base + ["-o", str(work / "ref")], check=True, capture_output=True)
    t_full = time.perf_counter() - t0
    ref = np.asarray(nib.load(str(work / "ref" / "qsm.nii.gz")).dataobj)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        sig = (signal.SIGKILL, signal.SIGTERM)[i % 2]
        delay = float(rng.uniform(0.05, t_full))
        out = work / f"out{i}"
        p = subprocess.Popen(base + ["-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(sig)
        p.wait()
        names = {q.name for q in out.iterdir()} if out.exists() else set()
        state = "absent" if not out.exists() else ("complete" if "provenance.json" in names else "PARTIAL")
        staged = len(list(work.glob(f".out{i}.partial-*")))
        r = subprocess.run(base + ["-o", str(out)], capture_output=True)
        same = r.returncode == 0 and np.array_equal(np.asarray(nib.load(str(out / "qsm.nii.gz")).dataobj), ref)
        left = len(list(work.glob(f".out{i}.partial-*")))
        rows.append((signal.Signals(sig).name, delay, state, staged, "same" if same else "DIFFERENT", left))
    shutil.rmtree(work, ignore_errors=True)
    return rows, t_full


def full_disk(scan: Path) -> str:
    if os.geteuid() != 0:
        return "not run: needs root for a size-limited tmpfs"
    disk = Path(tempfile.mkdtemp(prefix="pedq-disk-"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        return "not run: tmpfs mount refused"
    try:
        before = (scan / "phase.nii.gz").read_bytes()
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pedq_deploy.cli.run",
                str(scan / "magnitude.nii.gz"),
                str(scan / "phase.nii.gz"),
                "-o",
                str(disk / "out"),
                "--models",
                "none",
                "--inversion",
                "tkd",
                "-q",
            ],
            capture_output=True,
            text=True,
        )
        ok = (
            r.returncode == 2
            and "Traceback" not in r.stderr
            and not (disk / "out").exists()
            and not list(disk.glob(".out.partial-*"))
            and (scan / "phase.nii.gz").read_bytes() == before
        )
        return (
            f"{'passed' if ok else 'FAILED'}: exit {r.returncode}, message `{r.stderr.strip()}`; OUTDIR "
            f"{'absent' if not (disk / 'out').exists() else 'present'}, no staging left, input unchanged"
        )
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ---- 4. the MRD server under load ------------------------------------------------------------------------
def server_load(n_scans: int, concurrency: int) -> dict:
    from test_mrd import Client, send_scan

    from pedq_deploy.phantom import make_subject

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = subprocess.Popen(
        [sys.executable, "-m", "pedq_deploy.cli.serve", "--port", str(port), "--workers", "2", "--no-models"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    addr = ("127.0.0.1", port)
    for _ in range(200):
        try:
            socket.create_connection(addr, timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    subj = make_subject(seed=7, shape=(96, 96, 40), voxel_size=(2.0, 2.0, 3.0), tilt_deg=15.0)
    phase_int = np.clip(np.round((subj.phase + np.pi) * 2048 / np.pi), 0, 4095)
    lat, errors, lock = [], [], threading.Lock()

    def one(k):
        t0 = time.perf_counter()
        try:
            c = Client(addr)
            send_scan(c, subj, phase_int, config="pedq-tkd", shuffle=False)
            texts, imgs = c.replies()
            c.close()
            if len(imgs) != subj.magnitude.shape[2]:
                raise RuntimeError(f"{len(imgs)} images back")
            with lock:
                lat.append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")

    def abusers():  # garbage, half messages and early disconnects between the real scans
        for i in range(n_scans):
            try:
                s = socket.create_connection(addr, timeout=5)
                s.sendall((b"\xff\xff junk", b"\x03\x00\xe8\x03\x00\x00<ismr", b"\x01\x00pedq")[i % 3])
                s.close()
            except OSError:
                pass
            time.sleep(0.05)

    t0 = time.perf_counter()
    for k in range(n_scans // 2):  # sequential
        one(k)
    t_seq = time.perf_counter() - t0
    ab = threading.Thread(target=abusers)
    ab.start()
    t1 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(n_scans - n_scans // 2)]
    for i in range(0, len(threads), concurrency):
        batch = threads[i : i + concurrency]
        [t.start() for t in batch]
        [t.join(600) for t in batch]
    t_conc = time.perf_counter() - t1
    ab.join()
    status = Path(f"/proc/{srv.pid}/status").read_text()
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    alive = srv.poll() is None
    srv.send_signal(signal.SIGTERM)
    srv.communicate(timeout=60)
    return {
        "scans": n_scans,
        "sequential_s": t_seq,
        "concurrent_s": t_conc,
        "concurrency": concurrency,
        "latency": lat,
        "errors": errors,
        "peak_rss_mb": hwm,
        "alive": alive,
        "abusive_connections": n_scans,
        "grid": subj.magnitude.shape,
    }


# ---- 5. dependency audit -------------------------------------------------------------------------------
def audit() -> str:
    exe = Path(sys.executable).with_name("pip-audit")
    if not exe.exists():
        return "not run: pip-audit is not installed (`.venv/bin/pip install pip-audit`)"
    r = subprocess.run([str(exe), "--progress-spinner", "off"], capture_output=True, text=True, timeout=600)
    skipped = len([line for line in r.stdout.splitlines() if "could not be audited" in line])
    audited = "No known vulnerabilities found" in (r.stdout + r.stderr)
    return (
        f"`pip-audit` exit {r.returncode}; {skipped} packages skipped as 'not found on PyPI' "
        f"({'the rest: no known vulnerabilities' if audited else 'see its output'}). Here the package index is a mirror without "
        "PyPI's vulnerability data, so every package was skipped and this run proves nothing; on a machine that reaches "
        "pypi.org (or with `-s osv`) the same command audits them."
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sidecars", type=int, default=40)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--scans", type=int, default=16)
    ap.add_argument("--models", default=str(REPO / "export"))
    args = ap.parse_args()
    note = machine()
    from pedq_deploy.phantom import make_subject, write_subject

    scan = Path(tempfile.mkdtemp(prefix="pedq-rel-scan-"))
    write_subject(make_subject(seed=5, age="neonate", shape=(128, 128, 48), voxel_size=(1.5, 1.5, 3.0), tilt_deg=15.0), scan)
    fuzz_rows, tally = fuzz_inputs(args.sidecars)
    print("fuzz", dict(tally), flush=True)
    model_rows = tampered_models(Path(args.models), scan) if (Path(args.models) / "recon.json").is_file() else []
    print("models", len(model_rows), flush=True)
    kill_rows, t_full = kills(scan, args.kills)
    print("kills", kill_rows, flush=True)
    disk = full_disk(scan)
    print("disk", disk, flush=True)
    load = server_load(args.scans, 4)
    print("load", {k: v for k, v in load.items() if k != "latency"}, flush=True)
    aud = audit()
    shutil.rmtree(scan, ignore_errors=True)

    lat = np.array(load["latency"]) if load["latency"] else np.array([np.nan])
    lines = [
        "# Reliability",
        "",
        f"Written by `benchmarks/bench_reliability.py` ({time.strftime('%Y-%m-%d')}). Machine: {note}. The bounded versions of these "
        "checks run in CI (`tests/test_fuzz.py`, `tests/test_faults.py`, `tests/test_mrd.py`, the model cases of "
        "`tests/test_export_backends.py` / `tests/test_run_networks.py`).",
        "",
        "## Fuzzed inputs through pedq-run",
        "",
        f"{len(fuzz_rows)} cases on a tiny valid NIfTI pair (header fields, data types, 4D, scaling, truncated gzip at 7 points, "
        f"{args.sidecars} random sidecars, phase ranges, zero magnitude, NaN phase, a claimed 30000^3 volume). Contract: exit 0 with a "
        "complete OUTDIR, or exit 2 with one line on stderr, no traceback and no OUTDIR.",
        "",
        "| outcome | cases |",
        "| --- | ---: |",
        *[f"| {k} | {v} |" for k, v in tally.most_common()],
        "",
        "<details><summary>Every case</summary>",
        "",
        "| case | outcome | message | s |",
        "| --- | --- | --- | ---: |",
        *[f"| {n} | {o} | {r.replace('|', '/')} | {t:.2f} |" for n, o, r, t in fuzz_rows],
        "",
        "</details>",
        "",
        "## Models",
        "",
    ]
    if model_rows:
        lines += [
            "Shipped models copied and damaged, then `pedq-run --models`: each must be refused before any compute, naming the file.",
            "",
            "| damage | outcome | message | s |",
            "| --- | --- | --- | ---: |",
            *[f"| {n} | {o} | {r.replace('|', '/')} | {t:.1f} |" for n, o, r, t in model_rows],
        ]
    else:
        lines += ["Not run: no shipped models in `export/`."]
    lines += [
        "",
        "## Killed runs",
        "",
        f"`pedq-run --inversion tv` on a 128x128x48 phantom (a full run takes {t_full:.1f} s here, process start included), killed "
        "at a random moment, then rerun into the same OUTDIR.",
        "",
        "| signal | after (s) | OUTDIR after the kill | staging folders left by the kill | rerun vs an uninterrupted run | staging left after the rerun |",
        "| --- | ---: | --- | ---: | --- | ---: |",
        *[f"| {a} | {b:.2f} | {c} | {d} | {e} | {f} |" for a, b, c, d, e, f in kill_rows],
        "",
        "SIGTERM cleans up at once; a SIGKILLed run cannot, so its hidden staging folder (named with its process id) stays "
        "until the next run for that OUTDIR removes it. OUTDIR itself is never partial.",
        "",
        "## Full disk",
        "",
        f"A 600 kB tmpfs as the output file system: {disk}.",
        "",
        "## The MRD server under load",
        "",
        f"`pedq-serve --workers 2 --no-models` (pedq-tkd) on loopback; scans of {load['grid'][0]}x{load['grid'][1]}x{load['grid'][2]} "
        f"magnitude + phase slices. {load['scans'] // 2} scans one after the other, then {load['scans'] - load['scans'] // 2} in "
        f"batches of {load['concurrency']} concurrent clients while {load['abusive_connections']} abusive connections (garbage ids, "
        "headers cut short, disconnects mid-message) came in between.",
        "",
        "| what | value |",
        "| --- | --- |",
        f"| scans completed | {len(load['latency'])} of {load['scans']} |",
        f"| errors | {len(load['errors'])}{' (' + '; '.join(load['errors'][:3]) + ')' if load['errors'] else ''} |",
        f"| throughput, sequential | {(load['scans'] // 2) / load['sequential_s'] * 60:.1f} scans/min |",
        f"| throughput, concurrent | {(load['scans'] - load['scans'] // 2) / load['concurrent_s'] * 60:.1f} scans/min |",
        f"| latency p50 / p95 / max | {np.percentile(lat, 50):.2f} / {np.percentile(lat, 95):.2f} / {lat.max():.2f} s |",
        f"| server peak RSS | {load['peak_rss_mb']:.0f} MB |",
        f"| server still up afterwards | {'yes' if load['alive'] else 'NO'} |",
        "",
        "## Security",
        "",
        "- The server binds 127.0.0.1 unless `--host` says otherwise; message sizes are checked against limits before any "
        "allocation (a claimed 1 TiB image is refused, `tests/test_mrd.py`).",
        "- The runtime has no pickle, eval or `torch.load`: models are ONNX files whose sha256 is checked against the manifest "
        "before onnxruntime sees them (`torch.load(weights_only=True)` only in training, on our own checkpoints).",
        "- Output names are fixed by the code; DICOM text copied into outputs is not used in paths.",
        "",
        "## Dependency audit",
        "",
        aud,
        "",
    ]
    tmp = OUT.with_suffix(".md.partial")
    tmp.write_text("\n".join(lines))
    tmp.replace(OUT)
    ok_models = sum(1 for r in model_rows if r[1].startswith("refused"))
    ok_kills = sum(1 for r in kill_rows if r[2] != "PARTIAL" and r[4] == "same" and r[5] == 0)
    write_section(
        "reliability",
        "\n".join(
            [
                "## Reliability",
                "",
                f"Script: `benchmarks/bench_reliability.py` ({time.strftime('%Y-%m-%d')}); every case in `benchmarks/RELIABILITY.md`. Machine: {note}.",
                "",
                "| check | result |",
                "| --- | --- |",
                f"| fuzzed inputs through `pedq-run` (headers, data types, truncated files, sidecars, values) | {len(fuzz_rows)} cases: "
                + ", ".join(f"{v} {k}" for k, v in tally.most_common())
                + "; no traceback, no partial OUTDIR |",
                f"| damaged model files | {ok_models} of {len(model_rows)} refused before any compute, naming the file |",
                f"| runs killed at random (SIGKILL / SIGTERM), then rerun | {ok_kills} of {len(kill_rows)}: OUTDIR complete or absent, rerun identical, "
                "no staging left |",
                f"| full disk | {disk.split(':')[0]} |",
                f"| MRD server, {load['scans']} scans, concurrent clients and abusive connections | {len(load['latency'])} completed, "
                f"{len(load['errors'])} errors, p95 latency {np.percentile(lat, 95):.2f} s, {'still up' if load['alive'] else 'DOWN'} |",
            ]
        ),
    )
    print("\n".join(lines[-40:]))


if __name__ == "__main__":
    main()
