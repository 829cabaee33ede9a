"""scripts/device_tree.sh: the tree is made small for a device call and put back exactly."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs git and a git checkout")


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def clone(tmp_path):
    dst = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(dst)], check=True)
    shutil.copy(REPO / "scripts" / "device_tree.sh", dst / "scripts" / "device_tree.sh")  # the one under test
    (dst / ".whl").mkdir()
    (dst / ".whl" / "monai-0.0-py3-none-any.whl").write_bytes(b"stand-in: slim fetches MONAI only when missing")
    return dst


def _tree(cwd, *args):
    return subprocess.run(["bash", "scripts/device_tree.sh", *args], cwd=cwd, capture_output=True, text=True)


def test_slim_then_restore_leaves_the_checkout_as_it_was(clone):
    exclude = clone / ".git" / "info" / "exclude"
    before, status = exclude.read_text(), _git(clone, "status", "--porcelain")
    tracked = _git(clone, "ls-files", "export")
    assert "export/recon.onnx" in tracked

    r = _tree(clone, "slim")
    assert r.returncode == 0, r.stderr
    assert "export/recon.onnx" not in _git(clone, "ls-files", "export")   # untracked, not deleted
    assert (clone / "export" / "recon.onnx").is_file()
    assert sorted(p.name for p in (clone / ".gpu" / "export").iterdir()) == ["recon.json", "recon.onnx", "seg.json", "seg.onnx"]
    # what a device call would copy: tracked + not ignored, plus the carried paths, under 64 MiB
    listed = _git(clone, "ls-files", "--cached", "--others", "--exclude-standard").split()
    size = sum((clone / f).stat().st_size for f in listed if (clone / f).is_file())
    size += sum(p.stat().st_size for d in (".gpu", ".whl") for p in (clone / d).rglob("*") if p.is_file())
    assert size < 64 * 2**20
    assert _tree(clone, "slim").returncode == 2  # twice is refused

    r = _tree(clone, "restore")
    assert r.returncode == 0, r.stderr
    assert _git(clone, "ls-files", "export") == tracked
    assert _git(clone, "status", "--porcelain") == status
    assert exclude.read_text() == before
    assert not (clone / ".gpu" / "export").exists()


def test_slim_refuses_a_tree_too_large_to_carry_and_restores(clone):
    big = clone / ".gpu" / "other"
    big.mkdir(parents=True)
    (big / "weights").write_bytes(b"\0" * (40 * 2**20))
    r = _tree(clone, "slim")
    assert r.returncode == 2 and "over the 64 MiB" in r.stderr
    assert "export/recon.onnx" in _git(clone, "ls-files", "export")


def test_slim_refuses_an_unknown_role(clone):
    status = _git(clone, "status", "--porcelain")
    r = _tree(clone, "slim", "nope")
    assert r.returncode == 2 and "export/nope.onnx" in r.stderr
    assert _git(clone, "status", "--porcelain") == status
