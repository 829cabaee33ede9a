"""Export parity (PyTorch vs onnxruntime), manifests, and model-file verification."""

import json
import shutil

import numpy as np
import pytest

from pedq_deploy.backends import load_manifest, make_runner
from pedq_deploy.errors import InputError
from pedq_deploy.runtime.sliding_window import sliding_window_inference

torch = pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("onnx")

from pedq_deploy.export import export_network  # noqa: E402
from pedq_deploy.training.config import TrainConfig  # noqa: E402
from pedq_deploy.training.networks import MaskNet, ReconNet, SegNet  # noqa: E402
from pedq_deploy.training.trainer import Trainer  # noqa: E402

TINY = dict(
    patch=(32, 32, 32),
    grid=(48, 48, 40),
    voxel_size=(3.0, 3.0, 3.0),
    frame_voxel=3.0,
    recon_filters=4,
    recon_levels=3,
    unetr_feature_size=8,
    unetr_hidden_size=48,
    unetr_mlp_dim=96,
    unetr_heads=4,
    seg_region=(32, 32, 32),
    recon_window=(32, 32, 32),
    val_seeds=(2000,),
    device="cpu",
    crops_per_subject=1,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = TrainConfig(**TINY)
    out = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    paths = {
        role: export_network(net, role, 1, (32, 32, 32), out, voxel_size=cfg.voxel_size)
        for role, net in (("recon", ReconNet(cfg)), ("seg", SegNet(cfg)), ("mask", MaskNet(cfg)))
    }
    return out, paths


@pytest.mark.parametrize("role", ["recon", "seg", "mask"])
def test_export_parity_and_manifest(exported, role):
    out, paths = exported
    m = load_manifest(paths[role])
    assert m.role == role and m.patch == (32, 32, 32) and m.file.is_file()
    assert m.raw["parity"]["max_abs_error"] < 1e-4 + 1e-3 * 1.0
    assert m.raw["opset"] >= 17 and "exporter" in m.raw and m.raw["dynamic_axes"] == {"input": [0], "output": [0]}
    assert m.raw["frame"] == ("voxel" if role == "mask" else "b0")
    if role == "seg":
        assert m.raw["label_map"]["1"] == 10 and m.raw["label_map"]["8"] == 52
    with make_runner(m, "onnxruntime", threads=1) as runner:  # dynamic batch through the runner
        y = runner.infer({"input": np.zeros((2, m.in_channels, 32, 32, 32), np.float32)})["output"]
        assert y.shape == (2, m.out_channels, 32, 32, 32)


def test_runner_drives_the_sliding_window(exported):
    out, paths = exported
    m = load_manifest(paths["recon"])
    vol = np.random.default_rng(0).normal(0, 0.01, (1, 40, 36, 30)).astype(np.float32)
    with make_runner(m, "onnxruntime", threads=1) as runner:
        chi = sliding_window_inference(vol, m.patch, runner.predictor(), overlap=0.5, batch_size=2)
    assert chi.shape == (1, 40, 36, 30) and np.all(np.isfinite(chi))


def test_corrupted_and_malformed_manifests_are_refused(exported, tmp_path):
    out, paths = exported
    work = tmp_path / "m"
    shutil.copytree(out, work)
    # wrong sha256: a flipped byte
    data = bytearray((work / "recon.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (work / "recon.onnx").write_bytes(bytes(data))
    with pytest.raises(InputError, match="does not match the sha256"):
        load_manifest(work / "recon.json")
    # missing and malformed manifests name the file
    with pytest.raises(InputError, match="not found"):
        load_manifest(work / "nope.json")
    (work / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        load_manifest(work / "bad.json")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_truncated_and_mismatched_models_are_refused_by_each_backend(exported, tmp_path, backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    out, paths = exported
    work = tmp_path / "m"
    shutil.copytree(out, work)
    from pedq_deploy.io import sha256_file

    # truncated file whose manifest was (wrongly) updated: caught when the session is built
    (work / "recon.onnx").write_bytes((work / "recon.onnx").read_bytes()[:1000])
    man = json.loads((work / "recon.json").read_text())
    man["sha256"] = sha256_file(work / "recon.onnx")
    (work / "recon.json").write_text(json.dumps(man))
    with pytest.raises(InputError, match="cannot load model"):
        make_runner(load_manifest(work / "recon.json"), backend).activate()
    # a manifest claiming another patch size than the model takes
    man = json.loads((work / "seg.json").read_text())
    man["patch"] = [64, 64, 64]
    man["inputs"][0]["shape"] = ["batch", 1, 64, 64, 64]
    (work / "seg.json").write_text(json.dumps(man))
    with pytest.raises(InputError, match="manifest says"):
        make_runner(load_manifest(work / "seg.json"), backend).activate()


def test_pedq_export_from_a_checkpoint(tmp_path, capsys):
    from pedq_deploy.cli.export import main

    tr = Trainer("joint", TrainConfig(**TINY), tmp_path / "run")
    tr.train_step()
    tr.save()
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "run"), "-o", str(tmp_path / "exp")])
        raise SystemExit(0)
    assert not exc.value.code, capsys.readouterr().err
    for role in ("recon", "seg"):
        m = load_manifest(tmp_path / "exp" / f"{role}.json")
        assert m.raw["training"]["kind"] == "joint" and m.raw["training"]["steps"] == 1
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "missing"), "-o", str(tmp_path / "exp2")])
    assert exc.value.code == 2


def test_tensorrt_backend_skips_cleanly_without_tensorrt(exported):
    out, paths = exported
    m = load_manifest(paths["recon"])
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="names no TensorRT engine"):
            make_runner(m, "tensorrt")
        from pedq_deploy.backends.tensorrt import build_engine

        with pytest.raises(InputError, match="tensorrt"):
            build_engine(str(m.file), str(out / "x.engine"), m.patch, 4)
        from pedq_deploy.backends import resolve_auto

        assert make_runner(m, "auto").name == resolve_auto(m) != "tensorrt"
        pytest.skip("tensorrt is not installed: engine build and inference not exercised")
    pytest.skip("a TensorRT engine test needs a CUDA GPU; not available in CI")


@pytest.mark.parametrize("role", ["recon", "seg", "mask"])
def test_openvino_backend_matches_onnxruntime(exported, role):
    """Same ONNX file, same windows: OpenVINO (fp32) agrees with onnxruntime, for batch 1 and 3."""
    pytest.importorskip("openvino")
    out, paths = exported
    m = load_manifest(paths[role])
    x = np.random.default_rng(1).normal(0, 0.01 if role == "recon" else 0.5, (3, 1, 32, 32, 32)).astype(np.float32)
    with make_runner(m, "onnxruntime", threads=1) as ort_runner, make_runner(m, "openvino", threads=1) as ov_runner:
        assert ov_runner.name == "openvino"
        ref = ort_runner.infer({"input": x})["output"]
        for batch in (x[:1], x):
            got = ov_runner.infer({"input": batch})["output"]
            assert got.shape == (len(batch), m.out_channels, 32, 32, 32)
            scale = float(np.abs(ref).max())
            np.testing.assert_allclose(got, ref[: len(batch)], rtol=0, atol=1e-4 * scale + 1e-6)
        with pytest.raises(InputError, match="takes"):
            ov_runner.infer({"input": np.zeros((1, 1, 16, 32, 32), np.float32)})
    from pedq_deploy.backends import resolve_auto

    assert resolve_auto(m) in ("openvino", "onnxruntime")  # onnxruntime only where its CUDA provider is present


def test_export_fails_and_leaves_nothing_when_parity_does_not_hold(tmp_path):
    """An impossible tolerance (exact equality with a perturbed model output) must fail the export."""
    from pedq_deploy.export.onnx import ExportError

    class Jitter(torch.nn.Module):  # differs between eager (random) and the exported graph (traced constant)
        def forward(self, x):
            return x + torch.rand(1).item()

    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_network(Jitter(), "mask", 1, (8, 8, 8), tmp_path, voxel_size=(1, 1, 1))
    assert list(tmp_path.iterdir()) == []
