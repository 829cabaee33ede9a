"""pedq-run with exported networks, in processes that never import torch."""

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi

pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[1]
RUN = (
    "import sys\nfrom pedq_deploy.cli.run import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code or 0\nelse:\n    code = 0\n"
    "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)\n"
)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    import torch

    from pedq_deploy.export import export_network
    from pedq_deploy.training.config import TrainConfig
    from pedq_deploy.training.networks import MaskNet, ReconNet, SegNet

    cfg = TrainConfig(
        patch=(32, 32, 32),
        voxel_size=(3.0, 3.0, 3.0),
        frame_voxel=3.0,
        recon_filters=4,
        recon_levels=3,
        unetr_feature_size=8,
        unetr_hidden_size=48,
        unetr_mlp_dim=96,
        unetr_heads=4,
        seg_region=(32, 32, 32),
    )
    out = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    mask_net = MaskNet(cfg)
    with torch.no_grad():  # untrained, but biased to call the head's signal brain, so the mask is never empty
        mask_net.net.out.conv.conv.bias.copy_(torch.tensor([-5.0, 5.0]))
    for role, net in (("recon", ReconNet(cfg)), ("seg", SegNet(cfg)), ("mask", mask_net)):
        export_network(net, role, 1, (32, 32, 32), out, voxel_size=cfg.voxel_size)
    return out


def test_reconstruct_rotates_into_the_b0_frame_and_back(tmp_path):
    """With an identity 'network', chi is the local field itself: the rotation into the B0 frame
    and back keeps every structure where it was (a 25-degree tilt, anisotropic voxels)."""
    import torch

    from pedq_deploy.export import export_network
    from pedq_deploy.phantom import make_subject
    from pedq_deploy.runtime.networks import PedqModels

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x * 1.0

    export_network(Identity(), "recon", 1, (32, 32, 32), tmp_path, voxel_size=(2.0, 2.0, 2.0))
    s = make_subject(seed=3, shape=(72, 72, 36), voxel_size=(1.5, 1.5, 3.0), tilt_deg=25.0, snr=float("inf"))
    models = PedqModels(tmp_path, backend="onnxruntime")
    brain = s.brain_mask
    chi = models.reconstruct(s.chi, brain, s.voxel_size, s.b0_direction)
    models.close()
    ref = s.chi - s.chi[brain].mean()
    corr = lambda a: np.corrcoef(chi[brain], a[brain])[0, 1]  # noqa: E731
    assert corr(ref) > 0.85  # two linear interpolations of a piecewise-constant map with 3 mm slices
    for axis in range(3):  # one voxel off in any direction matches worse: nothing moved
        assert corr(np.roll(ref, 1, axis)) < corr(ref) and corr(np.roll(ref, -1, axis)) < corr(ref)
    assert np.abs(chi[brain].mean()) < 1e-6


def test_segmentation_in_voxel_and_b0_orientations_keeps_structures_in_place(tmp_path):
    """A pointwise 'segmentation network' (class 1 where chi > 0.05 ppm) labels the same ball of
    0.1 ppm, off the brain's centre, on the voxel axes, in the B0-aligned frame of a 25-degree tilt
    and in both: nothing moves."""
    import torch

    from pedq_deploy.errors import InputError
    from pedq_deploy.export import export_network
    from pedq_deploy.phantom import make_subject
    from pedq_deploy.runtime.networks import PedqModels

    class Threshold(torch.nn.Module):
        def forward(self, x):
            one = 200.0 * (x - 0.05)
            return torch.cat([torch.zeros_like(x), one] + [torch.full_like(x, -50.0)] * 7, dim=1)

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x * 1.0

    export_network(Threshold(), "seg", 1, (32, 32, 32), tmp_path, voxel_size=(2.0, 2.0, 2.0))
    export_network(Identity(), "recon", 1, (32, 32, 32), tmp_path, voxel_size=(2.0, 2.0, 2.0))
    s = make_subject(seed=3, shape=(72, 72, 36), voxel_size=(1.5, 1.5, 3.0), tilt_deg=25.0, snr=float("inf"))
    brain = s.brain_mask
    v = np.asarray(s.voxel_size)
    centre = np.array([i.mean() for i in np.nonzero(brain)]) * v + [6.0, -4.0, 3.0]  # mm
    mm = np.stack(np.meshgrid(*[np.arange(n) * d for n, d in zip(brain.shape, v)], indexing="ij"), -1)
    truth = (np.linalg.norm(mm - centre, axis=-1) < 9.0) & brain  # label 1 is FreeSurfer 10
    chi = np.where(truth, 0.1, 0.0).astype(np.float32)
    models = PedqModels(tmp_path, backend="onnxruntime")
    for o in ("voxel", "b0", "both"):
        lab = models.segment(chi, brain, s.voxel_size, b0=s.b0_direction, orientation=o)
        assert set(np.unique(lab)) <= {0, 10}
        got = lab == 10
        dice = lambda t: 2 * (got & t).sum() / (got.sum() + t.sum())  # noqa: E731
        assert dice(truth) > 0.95, (o, dice(truth))  # 0.98-0.99: a 9 mm ball resampled to 2 mm and back
        for axis in range(3):  # one voxel off matches worse: nothing moved
            assert dice(np.roll(truth, 1, axis)) < dice(truth) and dice(np.roll(truth, -1, axis)) < dice(truth)
    with pytest.raises(InputError, match="B0 direction"):
        models.segment(chi, brain, s.voxel_size, orientation="b0")
    with pytest.raises(InputError, match="orientation"):
        models.segment(chi, brain, s.voxel_size, b0=s.b0_direction, orientation="frame")
    models.close()


def test_old_recon_model_without_b0_frame_is_refused(tiny_models, tmp_path):
    from pedq_deploy.errors import InputError
    from pedq_deploy.runtime.networks import PedqModels

    bad = tmp_path / "old"
    shutil.copytree(tiny_models, bad)
    man = json.loads((bad / "recon.json").read_text())
    del man["frame"]
    (bad / "recon.json").write_text(json.dumps(man))
    with pytest.raises(InputError, match="not a B0-frame reconstruction model"):
        PedqModels(bad)


def run(args, cwd=None, python=sys.executable, env=None):
    return subprocess.run([python, "-c", RUN, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def test_pedq_run_with_networks_writes_segmentation_regions_and_quicklook(phantom_dir, tiny_models, tmp_path):
    out = tmp_path / "out"
    r = run([phantom_dir / "magnitude.nii.gz", phantom_dir / "phase.nii.gz", "-o", out, "--models", tiny_models])
    assert r.returncode == 0, r.stderr
    # the network segments its map, then the refinement (on by default with PedQ-NET and a segmentation) sharpens it
    assert "[5/7] segmentation" in r.stderr and "[6/7] refine" in r.stderr and "[7/7] qc" in r.stderr
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["inversion"] == "pedq" and prov["parameters"]["inversion"] == "auto" and prov["mask_source"] == "network"
    assert prov["parameters"]["refine"] == "auto" and prov["refined"] is True and "refine" in prov["timings_s"]
    assert set(prov["backend_used"]) == {"recon", "seg", "mask"}
    from pedq_deploy.config import MASK_THRESHOLD

    assert prov["parameters"]["mask_threshold"] == MASK_THRESHOLD  # the default, recorded
    assert set(prov["models"]) == {"recon", "seg", "mask"}
    seg = nib.load(str(out / "segmentation.nii.gz"))
    ref = nib.load(str(phantom_dir / "magnitude.nii.gz"))
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine, atol=1e-5)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 10, 11, 12, 13, 49, 50, 51, 52}
    rows = (out / "regions.csv").read_text().strip().splitlines()
    assert rows[0] == "label,name,voxels,volume_ml,mean_ppm,std_ppm,qc" and len(rows) == 9
    # untrained networks: whatever they label is checked, and a failed check is said on stderr and in the provenance
    checks = {r.split(",")[1]: r.split(",")[6] for r in rows[1:]}
    assert set(checks) == set(prov["segmentation_qc"])
    assert all(v == "ok" or set(v.split(";")) <= {"missing", "wrong_side", "fragmented", "asymmetric"} for v in checks.values())
    flagged = [n for n, v in checks.items() if v != "ok"]
    assert bool(flagged) == ("QC: segmentation implausible" in r.stderr)
    assert all(n in r.stderr for n in flagged)
    assert (out / "quicklook.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    qsm = np.asarray(nib.load(str(out / "qsm.nii.gz")).dataobj)
    assert np.all(np.isfinite(qsm))


def test_the_network_mask_is_closed_as_configured(small_subject, tiny_models):
    from pedq_deploy.preprocess import close_mask
    from pedq_deploy.runtime.networks import PedqModels, mask_from_probability
    from pedq_deploy.runtime.pipeline import PipelineConfig, run_case

    s = small_subject
    models = PedqModels(tiny_models)
    probability = models.mask_probability(s.magnitude, s.voxel_size)
    threshold = float(np.quantile(probability[s.brain_mask], 0.3))  # an untrained network: a mask with notches
    masks = {}
    for mm in (0.0, 4.0):
        cfg = PipelineConfig(
            echo_time=s.echo_time, field_strength=s.field_strength, inversion="tkd", mask_threshold=threshold, mask_closing=mm
        )
        masks[mm] = run_case(s.magnitude, s.phase, s.affine, s.voxel_size, cfg, models=models).mask
    models.close()
    assert np.array_equal(masks[0.0], mask_from_probability(probability, threshold))
    assert np.array_equal(masks[4.0], ndi.binary_fill_holes(close_mask(masks[0.0], 4.0, s.voxel_size)))
    assert masks[4.0].sum() > masks[0.0].sum() and not (masks[0.0] & ~masks[4.0]).any()


def test_refinement_is_tv_with_the_network_map_as_prior_and_keeps_its_segmentation(small_subject, tiny_models):
    from pedq_deploy.inversion import structure_edge_weight, tv_admm
    from pedq_deploy.physics import phase_to_ppm
    from pedq_deploy.preprocess import vsharp
    from pedq_deploy.runtime.networks import PedqModels
    from pedq_deploy.runtime.pipeline import PipelineConfig, run_case

    s = small_subject
    models = PedqModels(tiny_models)
    events = []
    runs = {
        (w, e): run_case(
            s.magnitude,
            s.phase,
            s.affine,
            s.voxel_size,
            PipelineConfig(
                echo_time=s.echo_time,
                field_strength=s.field_strength,
                inversion="pedq",
                refine=w > 0,
                refine_weight=w or 0.003,
                refine_edge_weight=e,
                refine_edge_band=2,
            ),
            models=models,
            progress=lambda st, ev, w=w: events.append((w, st, ev)),
        )
        for w, e in ((0.0, 1.0), (0.03, 1.0), (0.03, 0.0))
    }
    models.close()
    plain, refined, guided = runs[0.0, 1.0], runs[0.03, 1.0], runs[0.03, 0.0]
    plans = {w: ev.split(",") for w, st, ev in events if st == "plan"}
    assert "refine" not in plans[0.0] and plans[0.03].index("segmentation") < plans[0.03].index("refine")
    assert "refine" in refined.info["timings_s"] and "refine" not in plain.info["timings_s"]
    local, eroded = vsharp(phase_to_ppm(plain.phase_unwrapped, s.echo_time, s.field_strength), plain.mask, s.voxel_size)
    np.testing.assert_array_equal(local, plain.local_field)
    cfg = PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength)
    expect = tv_admm(
        local,
        plain.mask if cfg.fill_rim else eroded,  # the rim filled, or not, as the default says
        s.voxel_size,
        plain.info["b0_direction_voxel_frame"],
        cfg.refine_lambda,
        None,
        cfg.tv_iterations,
        prior=plain.qsm,
        prior_weight=0.03,
        data_mask=eroded if cfg.fill_rim else None,
    )
    np.testing.assert_allclose(refined.qsm, expect, atol=1e-5)
    assert np.abs(refined.qsm - plain.qsm).max() > 1e-3
    np.testing.assert_array_equal(refined.segmentation, plain.segmentation)  # the segmentation network sees the network's map
    # guided: the TV weight is lifted within 2 voxels of the segmented structures' boundaries (the default mode's way)
    assert plain.segmentation.any()
    expect = tv_admm(
        local,
        plain.mask if cfg.fill_rim else eroded,  # the rim filled, or not, as the default says
        s.voxel_size,
        plain.info["b0_direction_voxel_frame"],
        cfg.refine_lambda,
        None,
        cfg.tv_iterations,
        prior=plain.qsm,
        prior_weight=0.03,
        data_mask=eroded if cfg.fill_rim else None,
        tv_weight=structure_edge_weight(plain.segmentation, 0.0, 2, across=True),
    )
    np.testing.assert_allclose(guided.qsm, expect, atol=1e-5)
    assert np.abs(guided.qsm - refined.qsm).max() > 1e-4
    np.testing.assert_array_equal(guided.segmentation, plain.segmentation)


def test_guided_refinement_needs_boundaries_and_takes_given_labels(small_subject, tiny_models, tmp_path):
    """Without a segmentation model the guided refinement refuses (one clear error); given labels
    (e.g. a registered atlas) guide it instead, within the V-SHARP-eroded mask."""
    from pedq_deploy.errors import InputError
    from pedq_deploy.inversion import structure_edge_weight, tv_admm
    from pedq_deploy.physics import phase_to_ppm
    from pedq_deploy.preprocess import vsharp
    from pedq_deploy.runtime.networks import PedqModels
    from pedq_deploy.runtime.pipeline import PipelineConfig, run_case

    s = small_subject
    for f in tiny_models.iterdir():
        if not f.name.startswith("seg."):
            shutil.copy(f, tmp_path / f.name)
    models = PedqModels(tmp_path)
    assert not models.has("seg")
    cfg = PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength, inversion="pedq", refine=True, refine_weight=0.03)
    with pytest.raises(InputError, match="needs a segmentation model"):
        run_case(s.magnitude, s.phase, s.affine, s.voxel_size, cfg, models=models)
    res = run_case(s.magnitude, s.phase, s.affine, s.voxel_size, cfg, models=models, labels=s.labels, mask=s.brain_mask)
    plain = run_case(
        s.magnitude,
        s.phase,
        s.affine,
        s.voxel_size,
        PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength, inversion="pedq"),
        models=models,
        mask=s.brain_mask,
    )
    models.close()
    local, eroded = vsharp(phase_to_ppm(plain.phase_unwrapped, s.echo_time, s.field_strength), plain.mask, s.voxel_size)
    assert res.segmentation.any() and not res.segmentation[~eroded].any()
    expect = tv_admm(
        local,
        plain.mask if cfg.fill_rim else eroded,  # the rim filled, or not, as the default says
        s.voxel_size,
        plain.info["b0_direction_voxel_frame"],
        cfg.refine_lambda,
        None,
        cfg.tv_iterations,
        prior=plain.qsm,
        prior_weight=0.03,
        data_mask=eroded if cfg.fill_rim else None,
        tv_weight=structure_edge_weight(res.segmentation, cfg.refine_edge_weight, cfg.refine_edge_band, across=True),
    )
    np.testing.assert_allclose(res.qsm, expect, atol=1e-5)


def test_after_tkd_or_tv_the_segmentation_network_still_segments_the_network_map(small_subject, tiny_models):
    """The segmentation UNETR learnt on the reconstruction network's maps: a TKD or TV run with
    models gets the labels a pedq run gets (the network's map is made for it), not labels of a map
    it never saw."""
    from pedq_deploy.physics import phase_to_ppm
    from pedq_deploy.preprocess import vsharp
    from pedq_deploy.runtime.networks import PedqModels
    from pedq_deploy.runtime.pipeline import PipelineConfig, run_case

    s = small_subject
    models = PedqModels(tiny_models)
    runs = {
        inv: run_case(
            s.magnitude,
            s.phase,
            s.affine,
            s.voxel_size,
            PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength, inversion=inv),
            models=models,
        )
        for inv in ("pedq", "tkd", "tv")
    }
    _, eroded = vsharp(phase_to_ppm(runs["tkd"].phase_unwrapped, s.echo_time, s.field_strength), runs["tkd"].mask, s.voxel_size)
    on_tkd_map = models.segment(runs["tkd"].qsm, eroded, s.voxel_size)
    models.close()
    assert np.abs(runs["tv"].qsm - runs["pedq"].qsm).max() > 1e-3  # other maps ...
    for inv in ("tkd", "tv"):
        np.testing.assert_array_equal(runs[inv].segmentation, runs["pedq"].segmentation)  # ... the same labels
    assert not np.array_equal(on_tkd_map, runs["pedq"].segmentation)  # labelling TKD's own map would differ


def test_pedq_run_model_errors_exit_2(phantom_dir, tiny_models, tmp_path):
    base = [phantom_dir / "magnitude.nii.gz", phantom_dir / "phase.nii.gz"]
    env = {**os.environ, "PEDQ_MODELS": "none"}  # no models at all, not even the shipped ones
    r = run(base + ["-o", tmp_path / "a", "--inversion", "pedq"], env=env)
    assert r.returncode == 2 and "needs the PedQ-NET models" in r.stderr and "Traceback" not in r.stderr
    r = run(base + ["-o", tmp_path / "b", "--models", tmp_path / "nowhere"])
    assert r.returncode == 2 and "models folder not found" in r.stderr
    (tmp_path / "t.toml").write_text("mask_threshold = 1.5\n")
    r = run(base + ["-o", tmp_path / "t", "--models", tiny_models, "--config", tmp_path / "t.toml"])
    assert r.returncode == 2 and "mask threshold must lie between 0 and 1" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "t").exists()
    (tmp_path / "c.toml").write_text("mask_closing = -2\n")
    r = run(base + ["-o", tmp_path / "mc", "--models", tiny_models, "--config", tmp_path / "c.toml"])
    assert r.returncode == 2 and "mask_closing must be a number of mm >= 0" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "mc").exists()
    bad = tmp_path / "bad_models"
    shutil.copytree(tiny_models, bad)
    data = bytearray((bad / "seg.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "seg.onnx").write_bytes(bytes(data))
    r = run(base + ["-o", tmp_path / "c", "--models", bad])
    assert r.returncode == 2 and "seg.onnx does not match the sha256" in r.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_pip_install_without_torch_finds_the_shipped_models(phantom_dir, tiny_models, tmp_path):
    """`pip install .` (not editable) into a fresh venv without torch; pedq-run from elsewhere uses the shipped models."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "*.so", "demo_*"))
    for f in tiny_models.iterdir():
        shutil.copy(f, src / "export" / f.name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    pip = subprocess.run([py, "-m", "pip", "install", "-q", str(src)], capture_output=True, text=True, timeout=1200)
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert subprocess.run([py, "-c", "import torch"], capture_output=True).returncode != 0  # no torch there
    env = {k: v for k, v in os.environ.items() if k not in ("PEDQ_MODELS", "PYTHONPATH")}
    r = run([phantom_dir / "magnitude.nii.gz", phantom_dir / "phase.nii.gz", "-o", tmp_path / "o"], cwd=tmp_path, python=py, env=env)
    assert r.returncode == 0, r.stderr
    prov = json.loads((tmp_path / "o" / "provenance.json").read_text())
    assert prov["inversion"] == "pedq"
    assert "site-packages" in prov["models"]["recon"]["manifest"]


def test_dicom_in_with_networks_writes_a_dicom_seg(tiny_models, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from test_dicom import STUDY, _dciodvfy_errors, write_series

    from pedq_deploy.phantom import make_subject

    s = make_subject(seed=12, shape=(48, 48, 20), voxel_size=(4.0, 4.0, 5.0), tilt_deg=10.0, snr=200.0)
    write_series(tmp_path / "scan", s.magnitude, s.affine, "M")
    write_series(tmp_path / "scan", s.phase, s.affine, "P", series_number=2)
    r = run([tmp_path / "scan", "-o", tmp_path / "out", "--models", tiny_models, "--dicom-out", tmp_path / "dcm", "-q"])
    assert r.returncode == 0, r.stderr
    segs = [pydicom.dcmread(f) for f in (tmp_path / "dcm").glob("*.dcm") if pydicom.dcmread(f).Modality == "SEG"]
    assert len(segs) == 1 and segs[0].StudyInstanceUID == STUDY
    errors = _dciodvfy_errors(next(f for f in (tmp_path / "dcm").glob("DGM_seg.dcm")))
    assert errors in (None, []), errors


def test_pedq_serve_with_models_sends_the_segmentation_on_request(tiny_models):
    pytest.importorskip("ismrmrd")
    import threading

    from test_mrd import Client, send_scan

    from pedq_deploy.mrd.server import MrdServer
    from pedq_deploy.phantom import make_subject

    srv = MrdServer("127.0.0.1", 0, workers=1, models_dir=tiny_models, log=lambda m: None)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        s = make_subject(seed=13, shape=(48, 48, 20), voxel_size=(4.0, 4.0, 5.0), tilt_deg=10.0, snr=200.0)
        phase_int = np.clip(np.round((s.phase + np.pi) * 2048 / np.pi), 0, 4095)
        c = Client(srv.address)
        send_scan(c, s, phase_int, config="pedq", extra_text='{"config": "pedq", "segmentation": true}')
        texts, images = c.replies()
        c.close()
        series = sorted({int(im.image_series_index) for im in images})
        assert series == [98, 99], texts
        assert sum(int(im.image_series_index) == 98 for im in images) == s.magnitude.shape[2]
        assert any("(pedq)" in t for t in texts)
    finally:
        srv.shutdown()
