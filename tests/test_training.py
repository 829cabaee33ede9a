"""PedQ-NET training on tiny configs (skipped where torch/MONAI are not installed)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_TRAIN

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from pedq_deploy.errors import InputError  # noqa: E402
from pedq_deploy.phantom import make_subject  # noqa: E402
from pedq_deploy.training.config import TrainConfig, load_config  # noqa: E402
from pedq_deploy.training.data import PhantomStream  # noqa: E402
from pedq_deploy.training.losses import model_loss, phase_per_ppm  # noqa: E402
from pedq_deploy.training.trainer import Trainer  # noqa: E402

TINY = TINY_TRAIN


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


def test_model_loss_is_zero_for_the_truth_and_grows_with_error():
    s = make_subject(seed=4, shape=(48, 48, 40), voxel_size=(3.0, 3.0, 3.0), snr=float("inf"), tilt_deg=20)
    k = phase_per_ppm(s.echo_time, s.field_strength)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))[None]  # noqa: E731
    args = (
        t(s.local_field * k),
        t(np.ones_like(s.chi)),
        t(s.brain_mask),
        torch.from_numpy(np.asarray(s.b0_direction, np.float32)[None]),
        s.voxel_size,
        torch.tensor([k]),
    )
    exact = float(model_loss(t(s.chi), *args, pad_factor=2.0))
    noisy = float(model_loss(t(s.chi + np.random.default_rng(0).normal(0, 0.02, s.chi.shape) * s.brain_mask), *args, pad_factor=2.0))
    wrong_b0 = float(model_loss(t(s.chi), *args[:3], torch.tensor([[0.0, 0.0, 1.0]]), *args[4:], pad_factor=2.0))
    assert exact < 1e-4
    assert noisy > 50 * exact and wrong_b0 > 20 * exact


@pytest.mark.parametrize("kind", ["recon", "tv", "joint", "mask"])
def test_a_few_steps_lower_each_loss(kind):
    cfg = tiny()
    tr = Trainer(kind, cfg, "unused")
    samples = tr.stream.next_batch()
    first = tr.train_step(samples)["total"]
    for _ in range(6):
        last = tr.train_step(samples)["total"]
    assert last < first, (first, last)


def test_segmentation_gradient_reaches_the_reconstruction_network():
    tr = Trainer("joint", tiny(), "unused")
    batch = tr._tensors(tr.stream.next_batch())
    parts = tr.losses(batch)
    tr.opt.zero_grad()
    parts["seg"].backward()  # L_seg alone
    grads = [p.grad for p in tr.models["recon"].parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_checkpoint_resumes_to_the_same_state(tmp_path):
    cfg = tiny(crops_per_subject=2)
    a = Trainer("recon", cfg, tmp_path / "a")
    for _ in range(3):  # crosses a subject boundary after 2 crops
        a.train_step()
    a.save()
    b = Trainer("recon", cfg, tmp_path / "a")
    assert b.load() and b.step == 3 and b.stream.state() == a.stream.state()
    b.train_step()
    c = Trainer("recon", cfg, tmp_path / "c")
    for _ in range(4):
        c.train_step()
    for pb, pc in zip(b.models["recon"].parameters(), c.models["recon"].parameters()):
        torch.testing.assert_close(pb, pc, rtol=1e-5, atol=1e-6)


def test_joint_run_oversamples_structures_and_gives_the_unetr_its_own_step():
    tr = Trainer("joint", tiny(foreground_fraction=1.0, seg_lr=1e-4), "unused")
    lrs = sorted(g["lr"] for g in tr.opt.param_groups)
    assert lrs == [1e-4, 2e-3]
    for _ in range(3):  # (the centre may shift: crops are clamped into this tiny volume)
        assert tr.stream.next_sample().labels.any()
    assert Trainer("recon", tiny(foreground_fraction=1.0), "unused").stream.foreground_fraction == 0.0


def test_stream_is_deterministic():
    s1, s2 = PhantomStream(tiny()), PhantomStream(tiny())
    for _ in range(3):
        np.testing.assert_array_equal(s1.next_sample().field_ppm, s2.next_sample().field_ppm)


def test_data_workers_give_the_same_batches_and_resume(tmp_path):
    """Subjects prepared ahead in worker processes: the same crops as in-process, across subject
    boundaries and after a restore mid-subject."""
    ref = PhantomStream(tiny())
    expect = [ref.next_sample().field_ppm for _ in range(5)]  # 2 crops per subject: 3 subjects
    par = PhantomStream(tiny(), workers=2)
    try:
        for want in expect[:3]:
            np.testing.assert_array_equal(par.next_sample().field_ppm, want)
        par.restore({"subject_index": 1, "crop_index": 1})  # back to the 4th crop
        np.testing.assert_array_equal(par.next_sample().field_ppm, expect[3])
        np.testing.assert_array_equal(par.next_sample().field_ppm, expect[4])
    finally:
        par.close()
    assert par._pool is None
    with pytest.raises(InputError, match="data_workers"):
        load_config(None, data_workers=-1)


def test_pedq_train_cli_resumes_and_rejects_bad_config(tmp_path, capsys):
    from pedq_deploy.cli.train import main

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**TINY, "validate_every": 2, "checkpoint_every": 1}))
    out = tmp_path / "run"
    for steps, expect_rows in ((2, 2), (3, 3)):
        with pytest.raises(SystemExit) as exc:
            main(["recon", "--config", str(cfg), "--out", str(out), "--steps", str(steps), "-q"])
            raise SystemExit(0)
        assert not exc.value.code
        assert len((out / "train_log.csv").read_text().strip().splitlines()) == expect_rows + 1
    assert (out / "checkpoint.pt").is_file() and (out / "val_log.csv").is_file()
    # a time budget stops the run with a checkpoint; the checkpoint says how long and where it trained
    with pytest.raises(SystemExit) as exc:
        main(["recon", "--config", str(cfg), "--out", str(out), "--steps", "50", "--time-limit", "0.0001", "-q"])
        raise SystemExit(0)
    assert not exc.value.code
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] < 50 and state["train_seconds"] > 0 and state["hardware"][0].startswith("cpu: ")
    with pytest.raises(SystemExit) as exc:
        main(["recon", "--config", str(cfg), "--out", str(out), "--time-limit", "-1"])
    assert exc.value.code == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(SystemExit) as exc:
        main(["recon", "--config", str(bad), "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "unknown config keys: learning_rate" in capsys.readouterr().err
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.json")


def test_a_run_starts_from_exported_models_with_their_exact_weights(tmp_path):
    """Fine-tuning: ONNX weights (named convolutions, anonymous transposed MatMuls of the ViT) go
    back into fresh networks, which then compute what the exported ones do."""
    from pedq_deploy.export import export_network
    from pedq_deploy.training.networks import MaskNet, ReconNet
    from pedq_deploy.training.warmstart import load_onnx_weights

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
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    for role, make in (("mask", MaskNet), ("recon", ReconNet)):
        torch.manual_seed(0)
        trained = make(cfg)
        export_network(trained, role, 1, (32, 32, 32), tmp_path, voxel_size=cfg.voxel_size)
        torch.manual_seed(1)
        fresh = make(cfg)
        with torch.no_grad():
            assert not torch.allclose(fresh.eval()(x), trained.eval()(x))
        load_onnx_weights(fresh, tmp_path / f"{role}.onnx", x)
        with torch.no_grad():
            torch.testing.assert_close(fresh.eval()(x), trained.eval()(x), rtol=1e-5, atol=1e-6)
    other = MaskNet(TrainConfig(**{**cfg.__dict__, "unetr_hidden_size": 96, "unetr_mlp_dim": 192}))
    with pytest.raises(InputError, match="another configuration"):
        load_onnx_weights(other, tmp_path / "mask.onnx", x)


def test_pedq_train_init_from_fine_tunes_and_the_export_keeps_both_records(tmp_path):
    """--init-from: a new run starts from exported weights; its export records the starting models' training."""
    from pedq_deploy.cli.train import main
    from pedq_deploy.export import export_checkpoint

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**TINY, "validate_every": 100, "checkpoint_every": 1}))
    first, second = tmp_path / "first", tmp_path / "second"
    for out, extra in ((first, []), (second, ["--init-from", str(tmp_path / "exported")])):
        with pytest.raises(SystemExit) as exc:
            main(["tv", "--config", str(cfg), "--out", str(out), "--steps", "1", "-q", *extra])
            raise SystemExit(0)
        assert not exc.value.code
        if out is first:
            export_checkpoint(first, tmp_path / "exported")
    manifest = json.loads((tmp_path / "exported" / "recon.json").read_text())
    export_checkpoint(second, tmp_path / "tuned")
    tuned = json.loads((tmp_path / "tuned" / "recon.json").read_text())["training"]
    assert tuned["steps"] == 1 and tuned["init_from"]["recon"]["sha256"] == manifest["sha256"]
    assert tuned["init_from"]["recon"]["training"]["steps"] == 1
    with pytest.raises(SystemExit) as exc:  # a folder without the models this kind needs
        main(
            [
                "joint",
                "--config",
                str(cfg),
                "--out",
                str(tmp_path / "third"),
                "--steps",
                "1",
                "-q",
                "--init-from",
                str(tmp_path / "exported"),
            ]
        )
    assert exc.value.code == 2
    # --init-roles: the reconstruction U-Net from the export, a fresh segmentation UNETR
    joint = tmp_path / "joint"
    cfg = tmp_path / "joint.json"  # the exported U-Net's window
    cfg.write_text(json.dumps({**TINY, "recon_window": [32, 32, 32], "validate_every": 100, "checkpoint_every": 1}))
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "joint",
                "--config",
                str(cfg),
                "--out",
                str(joint),
                "--steps",
                "1",
                "-q",
                "--init-from",
                str(tmp_path / "exported"),
                "--init-roles",
                "recon",
            ]
        )
        raise SystemExit(0)
    assert not exc.value.code
    state = torch.load(joint / "checkpoint.pt", weights_only=True)
    assert set(state["init_from"]) == {"recon"} and state["init_from"]["recon"]["sha256"] == manifest["sha256"]
    for bad in (["--init-roles", "seg"], ["--init-roles", "mask"]):  # no seg.json there; no mask network in a joint run
        with pytest.raises(SystemExit) as exc:
            main(
                [
                    "joint",
                    "--config",
                    str(cfg),
                    "--out",
                    str(tmp_path / "bad"),
                    "--steps",
                    "1",
                    "-q",
                    "--init-from",
                    str(tmp_path / "exported"),
                    *bad,
                ]
            )
        assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["joint", "--config", str(cfg), "--out", str(tmp_path / "bad"), "--steps", "1", "-q", "--init-roles", "recon"])
    assert exc.value.code == 2


def test_a_frozen_network_keeps_its_loaded_weights_and_its_record(tmp_path):
    """frozen: ["recon"] trains the segmentation UNETR alone on a trained reconstruction U-Net; the
    U-Net leaves the run bit for bit as it came in, and its export keeps the record it came with."""
    from pedq_deploy.cli.train import main
    from pedq_deploy.export import export_checkpoint

    base = {**TINY, "recon_window": [32, 32, 32], "validate_every": 100, "checkpoint_every": 1}
    cfg = tmp_path / "tv.json"
    cfg.write_text(json.dumps(base))
    run = lambda kind, conf, out, *extra: main([kind, "--config", str(conf), "--out", str(out), "--steps", "2", "-q", *extra])  # noqa: E731
    with pytest.raises(SystemExit) as exc:
        run("tv", cfg, tmp_path / "tv")
        raise SystemExit(0)
    assert not exc.value.code
    export_checkpoint(tmp_path / "tv", tmp_path / "exported")
    frozen = tmp_path / "frozen.json"
    frozen.write_text(json.dumps({**base, "frozen": ["recon"]}))
    with pytest.raises(SystemExit) as exc:
        run("joint", frozen, tmp_path / "seg", "--init-from", str(tmp_path / "exported"), "--init-roles", "recon")
        raise SystemExit(0)
    assert not exc.value.code
    before = torch.load(tmp_path / "tv" / "checkpoint.pt", weights_only=True)["models"]["recon"]
    after = torch.load(tmp_path / "seg" / "checkpoint.pt", weights_only=True)
    for name, value in before.items():
        assert torch.equal(value, after["models"]["recon"][name]), name
    assert len(after["optimizer"]["param_groups"]) == 1  # the UNETR's parameters alone
    fresh = Trainer("joint", tiny(recon_window=(32, 32, 32)), "unused").models["seg"].state_dict()  # same seed: the UNETR's start
    assert any(not torch.equal(v, after["models"]["seg"][k]) for k, v in fresh.items())
    export_checkpoint(tmp_path / "seg", tmp_path / "tuned")
    rec = json.loads((tmp_path / "tuned" / "recon.json").read_text())["training"]
    seg = json.loads((tmp_path / "tuned" / "seg.json").read_text())["training"]
    assert rec["kind"] == "tv" and rec["steps"] == 2  # the U-Net's own history, not this run's
    assert seg["kind"] == "joint" and seg["steps"] == 2 and seg["config"]["frozen"] == ["recon"]
    # the other way round: the U-Net trains under a frozen UNETR (whose file lacks the parameters
    # MONAI builds and never calls: loading must still find them idle)
    frozen.write_text(json.dumps({**base, "frozen": ["seg"]}))
    with pytest.raises(SystemExit) as exc:
        run("joint", frozen, tmp_path / "rec", "--init-from", str(tmp_path / "tuned"))
        raise SystemExit(0)
    assert not exc.value.code
    last = torch.load(tmp_path / "rec" / "checkpoint.pt", weights_only=True)["models"]
    for name, value in after["models"]["seg"].items():
        assert torch.equal(value, last["seg"][name]), name
    assert any(not torch.equal(v, last["recon"][k]) for k, v in after["models"]["recon"].items())
    for conf, extra in (
        ({**base, "frozen": ["recon"]}, []),  # nothing loaded: it would stay random
        ({**base, "frozen": ["mask"]}, ["--init-from", str(tmp_path / "exported"), "--init-roles", "recon"]),
        ({**base, "frozen": ["recon", "seg"]}, ["--init-from", str(tmp_path / "exported"), "--init-roles", "recon"]),
        ({**base, "frozen": "recon"}, []),
    ):
        frozen.write_text(json.dumps(conf))
        with pytest.raises(SystemExit) as exc:
            run("joint", frozen, tmp_path / "bad", *extra)
        assert exc.value.code == 2, conf


def test_the_segmentation_unetr_sees_chi_as_pedq_run_gives_it(tmp_path):
    """seg_input="masked": chi inside the eroded mask, referenced to its mean there, zero outside
    (what pedq-run feeds the network); "raw" is what runs before the field did, and resumes so."""
    tr = Trainer("joint", tiny(), tmp_path / "run")
    batch = tr._tensors(tr.stream.next_batch())
    chi = torch.randn(batch["field"].shape, generator=torch.Generator().manual_seed(0)) + 0.3
    x = tr.seg_input(chi, batch["mask"])
    m = (batch["mask"] > 0)[:, None]
    assert m.any() and (~m).any()
    assert torch.all(x[~m] == 0) and abs(float(x[m].mean())) < 1e-5
    torch.testing.assert_close(x[m], (chi - chi[m].mean())[m])
    raw = Trainer("joint", tiny(seg_input="raw"), "unused")
    assert torch.equal(raw.seg_input(chi, batch["mask"]), chi)
    with pytest.raises(InputError, match="seg_input"):
        load_config(None, seg_input="unmasked")
    # a checkpoint that predates the field trained on raw chi: it resumes as "raw" only
    tr.save()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    del state["config"]["seg_input"]
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(InputError, match="seg_input"):
        Trainer("joint", tiny(), tmp_path / "run").load()
    assert Trainer("joint", tiny(seg_input="raw"), tmp_path / "run").load()


def test_sigterm_checkpoints_and_takes_the_data_workers_down(tmp_path):
    """A scheduler's (or `timeout`'s) SIGTERM ends the run after the step in hand, with a checkpoint
    and exit 0; the data workers go too, so a pipe from the run closes (communicate returns)."""
    import signal
    import time

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**TINY, "steps": 10000, "validate_every": 10000, "checkpoint_every": 10000}))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from pedq_deploy.cli.train import main; main()",
            "tv",
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--data-workers",
            "2",
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "train_log.csv").is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (out / "train_log.csv").is_file(), "no training step within 2 minutes"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(err.strip().splitlines()[-1].split("pedq-train: ", 1)[1])
    assert summary["stopped_by"] == "SIGTERM" and summary["step"] >= 1
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == summary["step"]
    # the weights it stopped with were validated, though validate_every was never reached
    assert (out / "val_log.csv").read_text().strip().splitlines()[-1].split(",")[0] == str(state["step"])


def test_subject_local_field_unwraps_with_the_method_asked_for(monkeypatch):
    """The benchmarks' local field: Laplacian unwrapping by default (as the shipped models trained),
    least squares or quality-guided on request, and training's as its config says. At the source TE, noise-free, all
    follow the true local field in the eroded mask (r > 0.8); they are not the same field, and an
    unknown method is refused."""
    from conftest import SMALL_SHAPE, SMALL_VOXEL

    from pedq_deploy.training.data import subject_local_field

    s = make_subject(seed=7, age="infant", shape=SMALL_SHAPE, voxel_size=SMALL_VOXEL, tilt_deg=25.0, snr=float("inf"))
    fields = {}
    for method in ("laplacian", "lsq", "quality"):
        lf, er = subject_local_field(s, unwrap=method)
        assert np.corrcoef(lf[er], s.local_field[er])[0, 1] > 0.8
        fields[method] = lf
    np.testing.assert_array_equal(subject_local_field(s)[0], fields["laplacian"])
    assert np.abs(fields["quality"] - fields["laplacian"]).max() > 1e-4  # ppm
    assert np.abs(fields["lsq"] - fields["laplacian"]).max() > 1e-4
    with pytest.raises(InputError, match="unwrapping method"):
        subject_local_field(s, unwrap="other")
    # training draws its subjects with the config's unwrapping (Laplacian unless asked: the shipped models')
    import pedq_deploy.training.data as data

    assert TrainConfig().unwrap == "laplacian"
    asked = []
    monkeypatch.setattr(
        data, "subject_local_field", lambda s, *a, unwrap, **kw: asked.append(unwrap) or subject_local_field(s, *a, unwrap=unwrap, **kw)
    )
    drawn = {m: data.prepare_subject(11, tiny(unwrap=m), np.random.default_rng(5)) for m in ("lsq", "laplacian")}
    assert asked == ["lsq", "laplacian"]
    assert drawn["lsq"].params["echo_time"] == drawn["laplacian"].params["echo_time"]  # the same draw
    assert np.abs(drawn["lsq"].local_field - drawn["laplacian"].local_field).max() > 1e-4
    with pytest.raises(InputError, match="unwrap must be one of"):
        load_config(None, unwrap="romeo")


def test_a_seg_run_learns_from_the_maps_pedq_run_makes(tmp_path):
    """kind "seg": the segmentation UNETR alone, on the chi an exported recon network makes through
    pedq-run's own code (PedqModels.reconstruct, then seg_grid); its export says it works on the
    voxel axes."""
    from pedq_deploy.export import export_checkpoint, export_network
    from pedq_deploy.runtime.networks import PedqModels, seg_grid
    from pedq_deploy.training import data
    from pedq_deploy.training.trainer import train

    class Identity(torch.nn.Module):  # chi = the local field: a map whose every voxel is known
        def forward(self, x):
            return x * 1.0

    export_network(Identity(), "recon", 1, (16, 16, 16), tmp_path / "recon", voxel_size=(3.0, 3.0, 3.0))
    cfg = tiny(seg_recon=str(tmp_path / "recon"), foreground_fraction=1.0, crops_per_subject=2)
    s = data.seg_subject(7, cfg, np.random.default_rng(3))
    ref = data.prepare_subject(7, cfg, np.random.default_rng(3))
    eroded = ref.params["loss_mask"]
    models = PedqModels(tmp_path / "recon", backend="onnxruntime")
    _, x, roi = seg_grid(models.reconstruct(ref.local_field, eroded, ref.voxel_size, ref.b0_direction), eroded, ref.voxel_size, (3.0,) * 3)
    models.close()
    np.testing.assert_array_equal(s.chi, x)
    np.testing.assert_array_equal(s.mask, roi)
    assert s.labels.shape == x.shape and s.labels.any() and not s.labels[~roi].any()
    tr = Trainer("seg", cfg, "unused")
    assert set(tr.models) == {"seg"}
    samples = tr.stream.next_batch()
    assert samples[0].labels.any()  # foreground_fraction 1: centred on a structure
    first = tr.train_step(samples)["total"]
    for _ in range(6):
        last = tr.train_step(samples)["total"]
    assert last < first, (first, last)
    train("seg", cfg.__class__(**{**cfg.__dict__, "steps": 2, "validate_every": 2, "checkpoint_every": 2}), tmp_path / "run", quiet=True)
    val = (tmp_path / "run" / "val_log.csv").read_text().splitlines()
    assert val[0] == "step,dgm_dice" and 0.0 <= float(val[1].split(",")[1]) <= 1.0
    paths = export_checkpoint(tmp_path / "run", tmp_path / "exported")
    assert [p.name for p in paths] == ["seg.json"]
    assert json.loads(paths[0].read_text())["frame"] == "voxel"
    with pytest.raises(InputError, match="seg_recon"):
        Trainer("seg", tiny(), "unused")


def _identity_recon(folder):
    from pedq_deploy.export import export_network

    class Identity(torch.nn.Module):  # chi = the local field: a map whose every voxel is known
        def forward(self, x):
            return x * 1.0

    export_network(Identity(), "recon", 1, (16, 16, 16), folder, voxel_size=(3.0, 3.0, 3.0))


def test_seg_crops_draw_their_own_box_as_the_runtime_would_cut_it(tmp_path):
    """seg_box_*: each crop's box is dgm_box with the drawn fraction and shift, cut and resampled by
    the runtime's own function, and placed anywhere in the window; validation keeps the true box."""
    from pedq_deploy.runtime.networks import _to_seg_grid, dgm_box
    from pedq_deploy.training import data

    _identity_recon(tmp_path / "recon")
    cfg = tiny(seg_recon=str(tmp_path / "recon"), seg_box_fraction=(0.3, 0.6), seg_box_shift=0.2, seg_region=(32, 32, 32))
    s = data.seg_subject(7, cfg, np.random.default_rng(3))
    plain = data.seg_subject(7, cfg, np.random.default_rng(3), augment=False)
    assert s.scan is not None and plain.scan is None
    np.testing.assert_array_equal(s.chi, plain.chi)  # the true box on the network's grid, as before
    chi, mask, labels, voxel_size = s.scan
    origins, sizes = set(), set()
    for k in range(6):
        rng = np.random.default_rng(k)
        sample = data.draw_sample(s, np.random.default_rng(k), cfg, 0.9, 0.5)
        box = dgm_box(mask, rng.uniform(0.3, 0.6, size=3), rng.uniform(-1, 1, size=3) * 0.2)
        x, roi = _to_seg_grid(chi[box], mask[box], voxel_size, (3.0,) * 3)
        assert all(n <= 32 for n in x.shape)  # the whole box lies in the window: find where
        where = np.argwhere(sample.mask > 0)
        o = tuple(where.min(0) - np.argwhere(roi).min(0))
        np.testing.assert_array_equal(sample.field_ppm[o[0] : o[0] + x.shape[0], o[1] : o[1] + x.shape[1], o[2] : o[2] + x.shape[2]], x)
        assert sample.mask.sum() == roi.sum() and sample.labels[sample.mask == 0].max() == 0
        origins.add(o)
        sizes.add(x.shape)
    assert len(origins) > 1 and len(sizes) > 1
    with pytest.raises(InputError, match="seg_box_fraction"):
        load_config(None, seg_box_fraction=[0.7, 0.5])
    with pytest.raises(InputError, match="seg_network_mask needs a masking network"):
        data.require_seg_recon(tiny(seg_recon=str(tmp_path / "recon"), seg_network_mask=0.5))


def _threshold_models(folder):
    """An identity reconstruction network and a masking network that calls brain the normalised
    magnitude above 0.5 (so its mask differs from the true one), exported to ``folder``."""
    from pedq_deploy.export import export_network

    class Threshold(torch.nn.Module):
        def forward(self, x):
            return torch.cat([torch.zeros_like(x), 40.0 * (x - 0.5)], 1)

    _identity_recon(folder)
    export_network(Threshold(), "mask", 1, (16, 16, 16), folder, voxel_size=(3.0, 3.0, 3.0))


def test_seg_heads_may_be_masked_by_the_masking_network(tmp_path):
    """seg_network_mask 1: unwrapping, V-SHARP, the reconstruction and the box all on the exported
    masking network's mask, as pedq-run runs them."""
    from pedq_deploy.runtime.networks import PedqModels, seg_grid
    from pedq_deploy.training import data
    from pedq_deploy.training.data import subject_local_field

    _threshold_models(tmp_path / "models")
    cfg = tiny(seg_recon=str(tmp_path / "models"), seg_network_mask=1.0)
    s = data.seg_subject(7, cfg, np.random.default_rng(3))
    assert s.network_mask
    ref = data.prepare_subject(7, cfg, np.random.default_rng(3))
    models = PedqModels(tmp_path / "models", backend="onnxruntime")
    brain = models.mask(ref.magnitude, ref.voxel_size, closing_mm=cfg.network_mask_closing)
    assert not np.array_equal(brain, ref.brain_mask)
    local, eroded = subject_local_field(ref, unwrap=cfg.unwrap, mask=brain)
    _, x, roi = seg_grid(models.reconstruct(local, eroded, ref.voxel_size, ref.b0_direction), eroded, ref.voxel_size, (3.0,) * 3)
    models.close()
    np.testing.assert_array_equal(s.chi, x)
    np.testing.assert_array_equal(s.mask, roi)


def test_recon_heads_may_be_masked_by_the_masking_network(tmp_path):
    """recon_network_mask 1: the local field and the loss mask come from the exported masking
    network's mask, as pedq-run makes them; 0 keeps the true mask; bad settings are refused."""
    from pedq_deploy.runtime.networks import PedqModels
    from pedq_deploy.training import data
    from pedq_deploy.training.data import subject_local_field

    _threshold_models(tmp_path / "models")
    true = data.prepare_subject(7, tiny(), np.random.default_rng(3))
    s = data.prepare_subject(7, tiny(recon_network_mask=1.0, mask_model=str(tmp_path / "models")), np.random.default_rng(3))
    assert s.params["network_mask"] and not true.params["network_mask"]
    closed = data.prepare_subject(
        7, tiny(recon_network_mask=1.0, mask_model=str(tmp_path / "models"), network_mask_closing=6.0), np.random.default_rng(3)
    )
    models = PedqModels(tmp_path / "models", backend="onnxruntime")
    brain = models.mask(true.magnitude, true.voxel_size, closing_mm=0.0)  # the closing the config's default names
    brain_closed = models.mask(true.magnitude, true.voxel_size, closing_mm=6.0)
    models.close()
    assert not np.array_equal(brain, true.brain_mask)
    local, eroded = subject_local_field(true, unwrap="laplacian", mask=brain)
    np.testing.assert_array_equal(s.local_field, local)
    np.testing.assert_array_equal(s.params["loss_mask"], eroded)
    assert not np.array_equal(s.params["loss_mask"], true.params["loss_mask"])
    _, eroded_closed = subject_local_field(true, unwrap="laplacian", mask=brain_closed)
    np.testing.assert_array_equal(closed.params["loss_mask"], eroded_closed)

    cfg = tmp_path / "c.json"
    for bad, match in (
        ({"recon_network_mask": 1.5}, "share"),
        ({"recon_network_mask": 0.5, "seg_network_mask": 0.5}, "give one"),
        ({"network_mask_closing": -1}, "network_mask_closing"),
    ):
        cfg.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=match):
            load_config(cfg)
    with pytest.raises(InputError, match="no mask network"):
        Trainer("recon", tiny(recon_network_mask=0.5, mask_model=str(tmp_path)), tmp_path / "run")
    with pytest.raises(InputError, match="not mask"):
        Trainer("mask", tiny(recon_network_mask=0.5, mask_model=str(tmp_path / "models")), tmp_path / "run")


def test_a_run_records_the_exported_models_its_data_comes_from(tmp_path):
    """The record names the masking network that masked the heads (its sha256 and checkpoint), so
    a reproduction finds it after export/ ships another; a resume refuses a folder whose models
    changed since the run started."""
    from pedq_deploy.export import export_checkpoint
    from pedq_deploy.training.trainer import model_references, train

    models = tmp_path / "models"
    _threshold_models(models)
    cfg = tiny(recon_network_mask=1.0, mask_model=str(models), crops_per_subject=2, steps=1, checkpoint_every=1, validate_every=1)
    manifest = json.loads((models / "mask.json").read_text())
    assert model_references("recon", cfg) == {"mask_model": {"mask": {"sha256": manifest["sha256"], "checkpoint_sha256": None}}}
    assert model_references("recon", tiny()) == {}
    assert set(model_references("seg", tiny(seg_recon=str(models), seg_network_mask=0.5))["seg_recon"]) == {"recon", "mask"}
    train("recon", cfg, tmp_path / "run", quiet=True)
    record = json.loads(export_checkpoint(tmp_path / "run", tmp_path / "exported")[0].read_text())["training"]
    assert record["uses"]["mask_model"]["mask"]["sha256"] == manifest["sha256"]
    manifest["sha256"] = "0" * 64  # another masking network shipped in its place
    (models / "mask.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="changed since it started"):
        train("recon", TrainConfig(**{**cfg.__dict__, "steps": 2}), tmp_path / "run", quiet=True)


def test_domain_randomisation_is_off_by_default_and_draws_nothing_then():
    """The randomisation options draw from the subject's generator only when on: a config without
    them makes exactly the heads it made before they existed."""
    from pedq_deploy.training.data import prepare_subject

    plain = prepare_subject(3, tiny(), np.random.default_rng([0, 3]), magnitude_only=True)
    direct = make_subject(
        seed=3,
        age=plain.params["age"],
        shape=TINY["grid"],
        voxel_size=TINY["voxel_size"],
        tilt_deg=plain.params["tilt_deg"],
        echo_time=plain.params["echo_time"],
        snr=plain.params["snr"],
    )
    np.testing.assert_array_equal(plain.magnitude, direct.magnitude)
    np.testing.assert_array_equal(plain.params["loss_mask"], direct.brain_mask)


def test_randomised_magnitudes_differ_in_contrast_bias_slices_and_field_of_view():
    from pedq_deploy.phantom.anatomy import anatomy_available
    from pedq_deploy.training.data import augment_magnitude, prepare_subject

    cfg = tiny(contrast_jitter=0.4)
    a = prepare_subject(3, cfg, np.random.default_rng([0, 3]), magnitude_only=True)
    b = prepare_subject(3, tiny(), np.random.default_rng([0, 3]), magnitude_only=True)
    assert a.params["age"] == b.params["age"] and np.array_equal(a.brain_mask, b.brain_mask)  # the same head ...
    ratio = a.magnitude[a.brain_mask] / np.maximum(b.magnitude[b.brain_mask], 1e-6)
    assert np.std(ratio) > 0.05  # ... in another contrast
    # a bias field, thicker slices and a cut field of view act on the magnitude (and the cut on the brain mask)
    s = make_subject(seed=4, shape=TINY["grid"], voxel_size=TINY["voxel_size"], snr=float("inf"))
    before, brain = s.magnitude.copy(), s.brain_mask.copy()
    augment_magnitude(s, tiny(bias_field=0.3), np.random.default_rng(1))
    log_ratio = np.log(s.magnitude[brain] / before[brain])
    assert 0.05 < log_ratio.std() < 0.6 and np.array_equal(s.brain_mask, brain)
    s.magnitude = before.copy()
    augment_magnitude(s, tiny(slice_mm=(9.0, 9.0)), np.random.default_rng(1))
    assert np.abs(np.diff(s.magnitude, axis=2)).mean() < np.abs(np.diff(before, axis=2)).mean()  # smoother along z
    cut = None
    for seed in range(20):  # half the heads keep their whole field of view
        s.magnitude, s.brain_mask = before.copy(), brain.copy()
        augment_magnitude(s, tiny(fov_cut=0.3), np.random.default_rng(seed))
        if not np.array_equal(s.magnitude, before):
            cut = s
            break
    assert cut is not None and (cut.magnitude == 0).any() and not cut.brain_mask[cut.magnitude == 0].any()
    assert cut.brain_mask.sum() < brain.sum()
    if anatomy_available():
        both = tiny(anatomies=("procedural", "icbm"))
        drawn = {prepare_subject(k, both, np.random.default_rng([0, k]), magnitude_only=True).params["anatomy"] for k in range(6)}
        assert drawn == {"procedural", "icbm"}
    for bad in ({"anatomies": ["mouse"]}, {"contrast_jitter": -0.1}, {"slice_mm": [3, 1]}, {"fov_cut": 2.0}):
        with pytest.raises(InputError):
            load_config(None, **bad)
