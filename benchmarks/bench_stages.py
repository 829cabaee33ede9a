"""Time each pipeline stage on the source protocol's 256x256x80 volume, against its FFT floor
and against the peers a user would pick (scikit-image's unwrapper, a plain NumPy Laplacian).

Run alone (two cores are easily disturbed): ``.venv/bin/python benchmarks/bench_stages.py``.
Writes results/stages.md (the speed section of benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import scipy.fft

sys.path.insert(0, str(Path(__file__).parent))
from _report import machine, median_time, write_json, write_section  # noqa: E402

from pedq_deploy.inversion import crop_to_mask, tkd, tv_admm  # noqa: E402
from pedq_deploy.io import save_image  # noqa: E402
from pedq_deploy.phantom import make_subject, write_subject  # noqa: E402
from pedq_deploy.physics import fft_workers, phase_to_ppm  # noqa: E402
from pedq_deploy.preprocess import classic_mask, default_radii, laplacian_unwrap, lsq_unwrap, quality_unwrap, vsharp  # noqa: E402
from pedq_deploy.preprocess.vsharp import vsharp_fft_count  # noqa: E402
from pedq_deploy.runtime.pipeline import load_inputs  # noqa: E402

TV_ITERS = 60


def numpy_laplacian_unwrap(phase, voxel_size):
    """The same algorithm in plain NumPy (numpy.fft, no fused kernels): the comparison baseline."""
    shape = phase.shape
    lap = sum(
        ((2 * np.cos(2 * np.pi * np.fft.fftfreq(n)) - 2) / h**2).reshape([-1 if a == i else 1 for i in range(3)])
        for a, (n, h) in enumerate(zip(shape, voxel_size))
    )
    s, c = np.sin(phase), np.cos(phase)
    lap_phi = c * np.fft.ifftn(lap * np.fft.fftn(s)).real - s * np.fft.ifftn(lap * np.fft.fftn(c)).real
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(lap != 0, 1.0 / lap, 0.0)
    return np.fft.ifftn(inv * np.fft.fftn(lap_phi)).real.astype(np.float32)


def numpy_vsharp(field, mask, voxel_size, radii, threshold=0.05):
    """The same V-SHARP in plain NumPy (numpy.fft, array expressions): the comparison baseline."""
    from pedq_deploy.preprocess.vsharp import sphere_kernel

    m = mask.astype(np.float64)
    f_spec, m_spec = np.fft.rfftn(field * m), np.fft.rfftn(m)
    out, done, d_max = np.zeros(field.shape), np.zeros(field.shape, bool), None
    for r in sorted(radii, reverse=True):
        s = np.fft.rfftn(sphere_kernel(field.shape, r, voxel_size)).real
        smv_mask = np.fft.irfftn(m_spec * s, s=field.shape, axes=(0, 1, 2))
        hp = np.fft.irfftn(f_spec * (1 - s), s=field.shape, axes=(0, 1, 2))
        new = (~done) & (smv_mask > 0.999)
        out[new], done[new] = hp[new], True
        d_max = 1 - s if d_max is None else d_max
    spec = np.fft.rfftn(out)
    spec = np.where(np.abs(d_max) > threshold, spec / np.where(np.abs(d_max) > threshold, d_max, 1), 0)
    local = np.fft.irfftn(spec, s=field.shape, axes=(0, 1, 2))
    return np.where(done, local, 0).astype(np.float32), done


def fft_times(shape):
    w = fft_workers()
    xc = (np.random.default_rng(0).standard_normal(shape) + 0j).astype(np.complex64)
    xr = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    tc, _ = median_time(lambda: scipy.fft.fftn(xc, workers=w), 5)
    spec = scipy.fft.rfftn(xr, workers=w)
    tf, _ = median_time(lambda: scipy.fft.rfftn(xr, workers=w), 5)
    ti, _ = median_time(lambda: scipy.fft.irfftn(spec, s=shape, workers=w), 5)
    return tc, (tf + ti) / 2


def peak_mb(fn):
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    load_note = machine()
    work = Path(tempfile.mkdtemp(prefix="pedq-bench-"))
    subject = make_subject(seed=100, age="neonate")
    write_subject(subject, work / "scan")
    # warm the Numba kernels (compilation is cached on disk, but load them once)
    small = make_subject(seed=1, shape=(48, 48, 32), voxel_size=(3.0, 3.0, 4.0))
    vsharp(laplacian_unwrap(small.phase, small.voxel_size), small.brain_mask, small.voxel_size, radii=(9.0, 8.0))
    lsq_unwrap(small.phase, small.voxel_size)
    tv_admm(small.local_field, small.brain_mask, small.voxel_size, iterations=2)
    quality_unwrap(small.phase)

    v, shape = subject.voxel_size, subject.phase.shape
    mag, phase = subject.magnitude, subject.phase
    rows = []
    t_load, _ = median_time(lambda: load_inputs(str(work / "scan/magnitude.nii.gz"), str(work / "scan/phase.nii.gz")))
    rows.append(("load (2 NIfTI)", t_load, None, None))
    t_mask, mask = median_time(lambda: classic_mask(mag, v))
    rows.append(("mask (classic)", t_mask, None, None))
    tc, tr = fft_times(shape)
    t_lap, _ = median_time(lambda: laplacian_unwrap(phase, v))
    rows.append(("unwrap (Laplacian)", t_lap, 2 * tc + 2 * tr, "2 complex + 2 real FFTs"))
    t_lsq, unwrapped = median_time(lambda: lsq_unwrap(phase, v))
    rows.append(("unwrap (least squares: pedq-run's default)", t_lsq, 2 * tr, "2 real FFTs"))
    t_q, q = median_time(lambda: quality_unwrap(phase, mask=mask, magnitude=mag))
    rows.append(("unwrap (quality-guided, Cython, in mask)", t_q, None, None))
    field = phase_to_ppm(unwrapped, subject.echo_time, subject.field_strength)
    radii = default_radii(v)
    t_vs, (local, eroded) = median_time(lambda: vsharp(field, mask, v))
    nfft = vsharp_fft_count(len(radii))
    rows.append((f"V-SHARP ({len(radii)} radii)", t_vs, nfft * tr, f"{nfft} real FFTs"))
    box = crop_to_mask(eroded).shape
    _, tr_box = fft_times(box)
    t_tkd, _ = median_time(lambda: tkd(local, eroded, v, subject.b0_direction))
    rows.append((f"TKD (box {box})", t_tkd, 2 * tr_box, "2 real FFTs"))
    t_tv, chi = median_time(lambda: tv_admm(local, eroded, v, subject.b0_direction, iterations=TV_ITERS))
    rows.append((f"TV-ADMM ({TV_ITERS} it.)", t_tv, (2 * TV_ITERS + 1) * tr_box, f"{2 * TV_ITERS + 1} real FFTs"))
    out = work / "out"
    out.mkdir()

    def write():
        save_image(out / "mask.nii.gz", mask, subject.affine, dtype=np.uint8)
        for name, arr in (("phase_unwrapped", unwrapped), ("local_field", local), ("qsm", chi)):
            save_image(out / f"{name}.nii.gz", arr, subject.affine)

    t_write, _ = median_time(write)
    rows.append(("write (4 NIfTI, gzip)", t_write, None, None))

    # peers
    from skimage.restoration import unwrap_phase as sk_unwrap

    t_sk, sk = median_time(lambda: sk_unwrap(np.ma.masked_array(phase, ~mask)), 1)
    t_np, _ = median_time(lambda: numpy_laplacian_unwrap(phase, v), 1)
    t_npv, (np_local, _) = median_time(lambda: numpy_vsharp(field, mask, v, default_radii(v)), 1)
    t_vs_ours, (our_local, our_eroded) = median_time(lambda: vsharp(field, mask, v), 3)
    vs_diff = float(np.abs(np_local - our_local)[our_eroded].max() / np.abs(our_local[our_eroded]).max())
    d = (q - np.asarray(sk.filled(0) if np.ma.isMaskedArray(sk) else sk))[mask]
    agree = float(np.mean(np.abs(d - np.median(d)) < 1e-3))

    # end to end through the CLI, in fresh processes
    # each run in a fresh process that reports its own peak RSS: VmHWM of its address space (ru_maxrss would
    # carry over the forking benchmark's own peak across exec)
    wrapper = (
        "import sys\nfrom pedq_deploy.cli.run import main\ntry:\n    main(sys.argv[2:])\nexcept SystemExit as e:\n"
        "    code = e.code or 0\nelse:\n    code = 0\n"
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "open(sys.argv[1], 'w').write(hwm)\nsys.exit(code)\n"
    )
    from pedq_deploy.backends.openvino import openvino_available
    from pedq_deploy.runtime.networks import find_models

    e2e, rss_runs = {}, {}
    # (label, --inversion, --backend): the default models on each CPU backend installed
    variants = [("tkd", "tkd", None), ("tv", "tv", None)]
    if find_models() is not None:
        variants.append(("auto", "auto", None))
        if openvino_available():  # auto picks OpenVINO; time onnxruntime too
            variants.append(("auto, onnxruntime", "auto", "onnxruntime"))
    for label, inv, backend in variants:

        def run():
            dst = work / "cli_run"
            shutil.rmtree(dst, ignore_errors=True)
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    wrapper,
                    str(work / "rss.txt"),
                    str(work / "scan/magnitude.nii.gz"),
                    str(work / "scan/phase.nii.gz"),
                    "-o",
                    str(dst),
                    "-q",
                    "--inversion",
                    inv,
                ]
                + (["--models", "none"] if inv != "auto" else [])
                + (["--backend", backend] if backend else []),
                check=True,
            )
            rss_runs[label] = max(rss_runs.get(label, 0), int((work / "rss.txt").read_text()) / 1024)
            prov = json.loads((dst / "provenance.json").read_text())
            used = sorted(set((prov.get("backend_used") or {}).values()))
            return prov["timings_s"], prov["inversion"] + (f"; {', '.join(used)}" if used else "")

        t, (tim, used) = median_time(run, 3)
        e2e[label] = (t, tim, used)
    peaks = {
        "Laplacian unwrap": peak_mb(lambda: laplacian_unwrap(phase, v)),
        "least-squares unwrap": peak_mb(lambda: lsq_unwrap(phase, v)),
        "V-SHARP": peak_mb(lambda: vsharp(field, mask, v)),
        "TV-ADMM": peak_mb(lambda: tv_admm(local, eroded, v, subject.b0_direction, iterations=5)),
    }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shutil.rmtree(work, ignore_errors=True)

    write_json(
        "stages",
        {
            "date": time.strftime("%Y-%m-%d"),
            "machine": load_note,
            "stages": [{"stage": n, "seconds": t, "fft_floor_s": f} for n, t, f, _ in rows],
            "end_to_end": {
                label: {"wall_s": t, "inside_s": tim, "ran": used, "peak_rss_mb": rss_runs[label]} for label, (t, tim, used) in e2e.items()
            },
        },
    )
    lines = [
        "## Speed: each stage on 256x256x80 (0.78x0.78x2 mm), median of 3",
        "",
        f"Machine: {load_note}. Script: `benchmarks/bench_stages.py` ({time.strftime('%Y-%m-%d')}).",
        "",
        f"FFT of one 256x256x80 volume here: complex64 {tc * 1e3:.1f} ms, real (rfft/irfft mean) {tr * 1e3:.1f} ms "
        f"(scipy.fft, {fft_workers()} workers).",
        "",
        "| stage | time (s) | FFT floor (s) | time / floor | floor counts |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, t, floor, what in rows:
        lines.append(
            f"| {name} | {t:.3f} | {'' if floor is None else f'{floor:.3f}'} | {'' if floor is None else f'{t / floor:.2f}'} | {what or ''} |"
        )
    lines += [
        "",
        "Peers, same volume:",
        "",
        f"- scikit-image `unwrap_phase` (quality-guided, masked): {t_sk:.2f} s; ours (Cython, quality-guided): {t_q:.2f} s "
        f"(**{t_sk / t_q:.1f}x**); the two agree to one global 2 pi multiple on {agree:.1%} of the mask.",
        f"- Laplacian unwrapping in plain NumPy (numpy.fft): {t_np:.2f} s; ours (fused Numba + scipy.fft): {t_lap:.2f} s (**{t_np / t_lap:.1f}x**).",
        f"- V-SHARP in plain NumPy (same radii and spheres, numpy.fft): {t_npv:.2f} s; ours (fused Numba + scipy.fft): {t_vs_ours:.2f} s "
        f"(**{t_npv / t_vs_ours:.1f}x**); largest difference {vs_diff:.1e} of the local field's range.",
        "",
        "End to end, `pedq-run` in a fresh process (least-squares unwrapping, V-SHARP; classic mask for TKD and TV; "
        "`auto` = the default: the shipped models, network mask, PedQ-NET inversion and segmentation, on the backend `auto` "
        "picks, in brackets with the inversion used; `auto, onnxruntime` the same with `--backend onnxruntime`), median of 3, "
        "with the process's peak RSS:",
        "",
    ]
    for label, (t, tim, used) in e2e.items():
        lines.append(
            f"- `{label}`{' (' + used + ')' if used != label else ''}: {t:.1f} s wall, peak RSS {rss_runs[label]:.0f} MB "
            "(inside: "
            + ", ".join(
                f"{k} {tim[k]:.2f}"
                for k in ("load", "mask", "unwrap", "background", "inversion", "segmentation", "refine", "qc", "write")
                if k in tim
            )
            + " s)"
        )
    lines += [
        "",
        "Peak memory (tracemalloc, NumPy allocations of the stage): "
        + ", ".join(f"{k} {p:.0f} MB" for k, p in peaks.items())
        + f"; peak RSS of the benchmark process {rss:.0f} MB.",
    ]
    write_section("stages", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
