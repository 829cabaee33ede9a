"""pedq-serve at the source protocol: start-up, first and second scan, with the default pipeline.

A pedq-serve process (the shipped models unless --no-models) receives a 256x256x80 GRE series
(0.78x0.78x2 mm, 3 T, TE 4.92 ms, a tilted neonate) as 80 magnitude + 80 phase MRD slices, the
phase as stored integers 0..4095, over loopback, three times in a row. Models and sessions load
at start-up, so the first scan should cost what the second does.

``.venv/bin/python benchmarks/bench_serve.py [--config pedq]``; writes benchmarks/results/serve.md.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from _report import machine, write_section  # noqa: E402
from test_mrd import Client, send_scan  # noqa: E402

from pedq_deploy.phantom import make_subject  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="pedq")
    ap.add_argument("--no-models", action="store_true")
    args = ap.parse_args()
    note = machine()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    srv = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pedq_deploy.cli.serve",
            "--port",
            str(port),
            "--workers",
            "2",
            *(["--no-models"] if args.no_models else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if srv.poll() is not None:
                sys.exit(f"pedq-serve did not start: {srv.stderr.read()}")
            time.sleep(0.05)
    t_start = time.perf_counter() - t0
    subj = make_subject(seed=1000, age="neonate", tilt_deg=15.0)
    phase_int = np.clip(np.round((subj.phase + np.pi) * 2048 / np.pi), 0, 4095)

    def scan():
        t = time.perf_counter()
        c = Client(("127.0.0.1", port))
        send_scan(c, subj, phase_int, config=args.config, shuffle=False)
        tx, imgs = c.replies()
        c.close()
        assert len(imgs) == subj.magnitude.shape[2], tx
        return time.perf_counter() - t, tx

    times, texts = [], []
    for _ in range(3):
        t, texts = scan()
        times.append(t)
    throughput = {}
    for n in (2, 4):
        lat = []
        t = time.perf_counter()
        threads = [threading.Thread(target=lambda: lat.append(scan()[0])) for _ in range(n)]
        [th.start() for th in threads]
        [th.join() for th in threads]
        throughput[n] = (n / (time.perf_counter() - t) * 60, max(lat))
    srv.terminate()
    srv.communicate(timeout=60)
    lines = [
        "## pedq-serve at the source protocol",
        "",
        f"One `pedq-serve --workers 2{' --no-models' if args.no_models else ''}` process; config `{args.config}`; a 256x256x80 series "
        "(0.78x0.78x2 mm, tilted 15 deg) sent as 80 magnitude + 80 phase MRD slices (phase as stored integers) over loopback; "
        f"time from the first byte sent to the close received. Machine: {note}. Script: `benchmarks/bench_serve.py`.",
        "",
        f"- Start-up (process start, imports, models and sessions loaded, listening): {t_start:.1f} s",
        f"- First scan: {times[0]:.1f} s; second: {times[1]:.1f} s; third: {times[2]:.1f} s",
        *[
            f"- {n} clients at once: {tp:.1f} scans/min, slowest client {mx:.1f} s (2 workers on 2 cores)"
            for n, (tp, mx) in throughput.items()
        ],
        f"- The server said: `{texts[0] if texts else ''}`",
    ]
    write_section("serve", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
