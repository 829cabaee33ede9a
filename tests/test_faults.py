"""Faults: pedq-run killed at random points (SIGKILL, SIGTERM) and a full disk never leave a partial
result that looks complete; a rerun gives the same result."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ARGS = ["--inversion", "tv", "--models", "none", "-q", "--overwrite"]


def start(phantom_dir, out):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pedq_deploy.cli.run",
            str(phantom_dir / "magnitude.nii.gz"),
            str(phantom_dir / "phase.nii.gz"),
            "-o",
            str(out),
            *ARGS,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p, timeout=300):
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err


def complete_or_absent(out: Path) -> bool:
    if not out.exists():
        return True
    names = {p.name for p in out.iterdir()}
    return "provenance.json" in names and {"qsm.nii.gz", "mask.nii.gz", "local_field.nii.gz"} <= names


@pytest.fixture(scope="module")
def reference(phantom_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    code, err = finish(start(phantom_dir, out))
    assert code == 0, err
    return np.asarray(nib.load(str(out / "qsm.nii.gz")).dataobj)


@pytest.mark.parametrize(
    "sig,delay", [(signal.SIGKILL, 0.3), (signal.SIGKILL, 1.5), (signal.SIGKILL, 3.0), (signal.SIGTERM, 1.0), (signal.SIGTERM, 2.5)]
)
def test_killed_run_leaves_nothing_partial_and_rerun_matches(phantom_dir, reference, tmp_path, sig, delay):
    out = tmp_path / "out"
    p = start(phantom_dir, out)
    time.sleep(delay)
    p.send_signal(sig)
    finish(p, 60)
    assert complete_or_absent(out)
    if sig == signal.SIGTERM:  # cleans up after itself
        assert not list(tmp_path.glob(".out.partial-*"))
    code, err = finish(start(phantom_dir, out))
    assert code == 0, err
    assert complete_or_absent(out) and out.exists()
    np.testing.assert_array_equal(np.asarray(nib.load(str(out / "qsm.nii.gz")).dataobj), reference)
    assert not list(tmp_path.glob(".out.partial-*"))  # a SIGKILLed run's staging folder is gone too


def _small_tmpfs(path: Path, size="600k") -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_full_disk_gives_one_line_error_and_no_output(phantom_dir, tmp_path):
    disk = tmp_path / "small"
    if not _small_tmpfs(disk):
        pytest.skip("cannot mount a size-limited tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        before = (phantom_dir / "phase.nii.gz").read_bytes()
        code, err = finish(start(phantom_dir, disk / "out"))
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "No space left" in err
        assert not (disk / "out").exists() and not list(disk.glob(".out.partial-*"))
        assert (phantom_dir / "phase.nii.gz").read_bytes() == before  # input untouched
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
