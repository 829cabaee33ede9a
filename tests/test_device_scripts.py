"""dev/: the tree is made small for a device call and put back exactly; weights come back in small parts."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_TRAIN

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs git and a git checkout")


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def clone(tmp_path):
    dst = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(dst)], check=True)
    for name in ("device_tree.sh", "onnx_half.py"):  # the ones under test
        (dst / "dev").mkdir(exist_ok=True)
        shutil.copy(REPO / "dev" / name, dst / "dev" / name)
    (dst / ".whl").mkdir()
    (dst / ".whl" / "monai-0.0-py3-none-any.whl").write_bytes(b"stand-in: slim fetches MONAI only when missing")
    return dst


def _tree(cwd, *args):
    env = {**os.environ, "PYTHON": sys.executable}  # onnx_half.py needs onnx
    return subprocess.run(["bash", "dev/device_tree.sh", *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_slim_then_restore_leaves_the_checkout_as_it_was(clone):
    exclude = clone / ".git" / "info" / "exclude"
    before, status = exclude.read_text(), _git(clone, "status", "--porcelain")
    tracked = _git(clone, "ls-files", "export")
    assert "export/recon.onnx" in tracked

    r = _tree(clone, "slim")
    assert r.returncode == 0, r.stderr
    assert "export/recon.onnx" not in _git(clone, "ls-files", "export")  # untracked, not deleted
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


def test_half_roles_travel_at_half_size_and_come_back_as_close_copies(clone):
    """ROLE:half: the masking network and a frozen UNETR travel as float16 (recon, seg and mask in
    float32 are over the 64 MiB a call carries); onnx_half.py unpack (device_train.sh, there) gives
    float32 models within float16 rounding whose manifests check and say so."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from pedq_deploy.backends.manifest import load_manifest

    r = _tree(clone, "slim", "recon", "seg:half", "mask:half")
    assert r.returncode == 0, r.stderr
    gpu = clone / ".gpu" / "export"
    assert sorted(p.name for p in gpu.iterdir()) == ["mask.half.onnx", "mask.json", "recon.json", "recon.onnx", "seg.half.onnx", "seg.json"]
    assert (gpu / "seg.half.onnx").stat().st_size < 0.55 * (clone / "export" / "seg.onnx").stat().st_size
    listed = _git(clone, "ls-files", "--cached", "--others", "--exclude-standard").split()
    size = sum((clone / f).stat().st_size for f in listed if (clone / f).is_file())
    size += sum(p.stat().st_size for d in (".gpu", ".whl") for p in (clone / d).rglob("*") if p.is_file())
    assert size < 64 * 2**20
    done = subprocess.run([sys.executable, "dev/onnx_half.py", "unpack", str(gpu)], cwd=clone, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list(gpu.glob("*.half.onnx"))
    for role in ("seg", "mask"):
        m = load_manifest(gpu / f"{role}.json")  # the sha256 check holds for the copy
        raw = json.loads((gpu / f"{role}.json").read_text())
        original = json.loads((clone / "export" / f"{role}.json").read_text())
        assert raw["transport"]["float16_rounded"] and raw["transport"]["original_sha256"] == original["sha256"] != m.sha256
        a = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(clone / "export" / f"{role}.onnx")).graph.initializer}
        b = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(gpu / f"{role}.onnx")).graph.initializer}
        assert a.keys() == b.keys()
        for k, v in a.items():
            assert b[k].dtype == v.dtype
            np_ok = (abs(b[k].astype("float64") - v) <= 2.0**-11 * abs(v) + 1e-7).all() if v.dtype.kind == "f" else (b[k] == v).all()
            assert np_ok, k
    assert _tree(clone, "restore").returncode == 0
    bad = subprocess.run(
        [sys.executable, "dev/onnx_half.py", "pack", "export", "nope", str(clone / "x")], cwd=clone, capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.startswith("onnx_half: error:") and "Traceback" not in bad.stderr


def test_weights_travel_in_parts_and_export_but_do_not_resume(tmp_path):
    """A run's weights split into small files (a GPU machine returns at most 16 MiB a file), joined
    and checked here, export like the original; resuming them is refused (no optimizer state)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("monai")
    import importlib.util

    from pedq_deploy.errors import InputError
    from pedq_deploy.export import export_checkpoint
    from pedq_deploy.training.config import TrainConfig
    from pedq_deploy.training.trainer import Trainer, train

    spec = importlib.util.spec_from_file_location("checkpoint_parts", REPO / "dev" / "checkpoint_parts.py")
    parts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parts)
    tiny = {**TINY_TRAIN, "checkpoint_every": 1, "validate_every": 100}
    run = tmp_path / "run"
    train("tv", TrainConfig(steps=1, **tiny), run, quiet=True)
    paths = parts.write_weight_parts(run, tmp_path / "parts", part_bytes=16 * 1024)
    assert len(paths) > 2 and all(p.stat().st_size <= 16 * 1024 for p in paths[:-1])
    joined = parts.join_weight_parts(tmp_path / "parts", tmp_path / "back")
    a = torch.load(run / "checkpoint.pt", weights_only=True)
    b = torch.load(joined, weights_only=True)
    assert "optimizer" not in b and b["step"] == a["step"] and b["hardware"] == a["hardware"]
    for k, v in a["models"]["recon"].items():
        torch.testing.assert_close(b["models"]["recon"][k], v, rtol=0, atol=0)
    assert [p.name for p in export_checkpoint(tmp_path / "back", tmp_path / "exported")] == ["recon.json"]
    with pytest.raises(InputError, match="weights only"):
        Trainer("tv", TrainConfig(steps=2, **tiny), tmp_path / "back").load()
    part = paths[1]
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(InputError, match="corrupt"):
        parts.join_weight_parts(tmp_path / "parts", tmp_path / "again")
    assert not (tmp_path / "again" / "checkpoint.pt").exists()
