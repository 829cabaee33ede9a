"""PedQ-NET training on tiny configs (skipped where torch/MONAI are not installed)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from pedq_deploy.errors import InputError  # noqa: E402
from pedq_deploy.phantom import make_subject  # noqa: E402
from pedq_deploy.training.config import TrainConfig, load_config, lr_factor  # noqa: E402
from pedq_deploy.training.data import PhantomStream  # noqa: E402
from pedq_deploy.training.losses import model_loss, phase_per_ppm  # noqa: E402
from pedq_deploy.training.trainer import Trainer  # noqa: E402

TINY = dict(patch=(32, 32, 32), grid=(48, 48, 40), voxel_size=(3.0, 3.0, 3.0), frame_voxel=3.0, batch_size=1, crops_per_subject=2,
            recon_filters=4, recon_levels=3, unetr_feature_size=8, unetr_hidden_size=48, unetr_mlp_dim=96, unetr_heads=4,
            seg_region=(32, 32, 32), recon_window=(16, 16, 16), lr=2e-3, val_seeds=(2000,), device="cpu")


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


def test_model_loss_is_zero_for_the_truth_and_grows_with_error():
    s = make_subject(seed=4, shape=(48, 48, 40), voxel_size=(3.0, 3.0, 3.0), snr=float("inf"), tilt_deg=20)
    k = phase_per_ppm(s.echo_time, s.field_strength)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))[None]  # noqa: E731
    args = (t(s.local_field * k), t(np.ones_like(s.chi)), t(s.brain_mask), torch.from_numpy(np.asarray(s.b0_direction, np.float32)[None]),
            s.voxel_size, torch.tensor([k]))
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


def test_cosine_schedule_warms_up_then_falls_to_zero_at_the_last_step():
    const = tiny(steps=10)
    assert [lr_factor(const, k) for k in (0, 5, 9)] == [1.0, 1.0, 1.0]  # the runs before the schedule
    cos = tiny(steps=104, lr_schedule="cosine", lr_warmup_steps=4)
    np.testing.assert_allclose([lr_factor(cos, k) for k in range(5)], [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(lr_factor(cos, 54), 0.5, atol=1e-12)  # half-way through the cosine
    np.testing.assert_allclose(lr_factor(cos, 104), 0.0, atol=1e-12)
    falling = [lr_factor(cos, k) for k in range(4, 105)]
    assert all(a > b for a, b in zip(falling, falling[1:]))


def test_trainer_steps_with_the_scheduled_rate_in_every_group():
    """Each parameter group (the UNETR's own seg_lr too) takes the schedule's factor of its rate."""
    cfg = tiny(steps=4, lr_schedule="cosine", lr_warmup_steps=1, seg_lr=1e-4, foreground_fraction=1.0)
    tr = Trainer("joint", cfg, "unused")
    try:
        for k in range(3):
            tr.train_step()
            lrs = sorted(g["lr"] for g in tr.opt.param_groups)
            np.testing.assert_allclose(lrs, [1e-4 * lr_factor(cfg, k), 2e-3 * lr_factor(cfg, k)], rtol=1e-12)
        assert lr_factor(cfg, 0) == 0.5 and lr_factor(cfg, 1) == 1.0 and lr_factor(cfg, 2) == pytest.approx(0.75)
    finally:
        tr.close()


def test_schedule_config_is_checked(tmp_path):
    for bad in ({"lr_schedule": "step"}, {"lr_warmup_steps": -1}, {"lr_warmup_steps": 10, "steps": 10}, {"lr_warmup_steps": 1.5}):
        p = tmp_path / "c.json"
        p.write_text(json.dumps(bad))
        with pytest.raises(InputError, match="lr_"):
            load_config(p)


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


def test_subjects_per_batch_mixes_heads_and_resumes():
    """Two subjects per batch of 4: two crops of each, drawn as each subject alone would give
    them; the group retires together, and a restore mid-group gives the same batches."""
    cfg = tiny(batch_size=4, crops_per_subject=4, subjects_per_batch=2)
    one = PhantomStream(tiny(crops_per_subject=4))
    alone = [one.next_sample().field_ppm for _ in range(12)]  # subjects 0, 1, 2: 4 crops each
    mixed = PhantomStream(cfg)
    first, second = mixed.next_batch(), mixed.next_batch()
    for batch, crops in ((first, (0, 1)), (second, (2, 3))):
        for got, want in zip(batch, [alone[c] for c in crops] + [alone[4 + c] for c in crops]):
            np.testing.assert_array_equal(got.field_ppm, want)
    assert mixed.state() == {"subject_index": 2, "crop_index": 0}
    third = mixed.next_batch()  # subjects 2 and 3
    np.testing.assert_array_equal(third[0].field_ppm, alone[8])
    again = PhantomStream(cfg)
    again.restore({"subject_index": 0, "crop_index": 2})
    for got, want in zip(again.next_batch(), second):
        np.testing.assert_array_equal(got.field_ppm, want.field_ppm)
    for bad in (dict(subjects_per_batch=3), dict(subjects_per_batch=0), dict(subjects_per_batch=2, crops_per_subject=3)):
        with pytest.raises(InputError, match="subjects_per_batch"):
            load_config(None, **{"batch_size": 4, "crops_per_subject": 4, **bad})


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
    with pytest.raises(Exception):
        load_config(tmp_path / "missing.json")


def test_a_run_starts_from_exported_models_with_their_exact_weights(tmp_path):
    """Fine-tuning: ONNX weights (named convolutions, anonymous transposed MatMuls of the ViT) go
    back into fresh networks, which then compute what the exported ones do."""
    from pedq_deploy.export import export_network
    from pedq_deploy.training.networks import MaskNet, ReconNet
    from pedq_deploy.training.warmstart import load_onnx_weights

    cfg = TrainConfig(patch=(32, 32, 32), voxel_size=(3.0, 3.0, 3.0), frame_voxel=3.0, recon_filters=4, recon_levels=3, unetr_feature_size=8,
                      unetr_hidden_size=48, unetr_mlp_dim=96, unetr_heads=4, seg_region=(32, 32, 32))
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
        main(["joint", "--config", str(cfg), "--out", str(tmp_path / "third"), "--steps", "1", "-q", "--init-from", str(tmp_path / "exported")])
    assert exc.value.code == 2
    # --init-roles: the reconstruction U-Net from the export, a fresh segmentation UNETR
    joint = tmp_path / "joint"
    cfg = tmp_path / "joint.json"  # the exported U-Net's window
    cfg.write_text(json.dumps({**TINY, "recon_window": [32, 32, 32], "validate_every": 100, "checkpoint_every": 1}))
    with pytest.raises(SystemExit) as exc:
        main(["joint", "--config", str(cfg), "--out", str(joint), "--steps", "1", "-q", "--init-from", str(tmp_path / "exported"),
              "--init-roles", "recon"])
        raise SystemExit(0)
    assert not exc.value.code
    state = torch.load(joint / "checkpoint.pt", weights_only=True)
    assert set(state["init_from"]) == {"recon"} and state["init_from"]["recon"]["sha256"] == manifest["sha256"]
    for bad in (["--init-roles", "seg"], ["--init-roles", "mask"]):  # no seg.json there; no mask network in a joint run
        with pytest.raises(SystemExit) as exc:
            main(["joint", "--config", str(cfg), "--out", str(tmp_path / "bad"), "--steps", "1", "-q", "--init-from", str(tmp_path / "exported"), *bad])
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
    for conf, extra in (({**base, "frozen": ["recon"]}, []),  # nothing loaded: it would stay random
                        ({**base, "frozen": ["mask"]}, ["--init-from", str(tmp_path / "exported"), "--init-roles", "recon"]),
                        ({**base, "frozen": ["recon", "seg"]}, ["--init-from", str(tmp_path / "exported"), "--init-roles", "recon"]),
                        ({**base, "frozen": "recon"}, [])):
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


def test_weights_travel_in_parts_and_export_but_do_not_resume(tmp_path):
    """A run's weights split into small files (a GPU machine returns at most 16 MiB a file), joined
    and checked here, export like the original; resuming them is refused (no optimizer state)."""
    from pedq_deploy.export import export_checkpoint
    from pedq_deploy.training.parts import join_weight_parts, write_weight_parts
    from pedq_deploy.training.trainer import train

    run = tmp_path / "run"
    train("tv", tiny(steps=1, checkpoint_every=1, validate_every=100), run, quiet=True)
    paths = write_weight_parts(run, tmp_path / "parts", part_bytes=16 * 1024)
    assert len(paths) > 2 and all(p.stat().st_size <= 16 * 1024 for p in paths[:-1])
    joined = join_weight_parts(tmp_path / "parts", tmp_path / "back")
    a = torch.load(run / "checkpoint.pt", weights_only=True)
    b = torch.load(joined, weights_only=True)
    assert "optimizer" not in b and b["step"] == a["step"] and b["hardware"] == a["hardware"]
    for k, v in a["models"]["recon"].items():
        torch.testing.assert_close(b["models"]["recon"][k], v, rtol=0, atol=0)
    assert [p.name for p in export_checkpoint(tmp_path / "back", tmp_path / "exported")] == ["recon.json"]
    with pytest.raises(InputError, match="weights only"):
        Trainer("tv", tiny(steps=2), tmp_path / "back").load()
    part = paths[1]
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(InputError, match="corrupt"):
        join_weight_parts(tmp_path / "parts", tmp_path / "again")
    assert not (tmp_path / "again" / "checkpoint.pt").exists()


def test_parts_leave_frozen_networks_behind_and_carry_snapshots_within_a_budget(tmp_path):
    """A joint run with its UNETR frozen travels as its U-Net alone (the UNETR is the export it
    started from), with as many snapshots, newest first, as the byte budget holds."""
    from pedq_deploy.export import export_checkpoint
    from pedq_deploy.training.parts import _bytes
    from pedq_deploy.training.trainer import train

    seg_dir = tmp_path / "start"
    train("joint", tiny(steps=1, checkpoint_every=1, validate_every=100), tmp_path / "first", quiet=True)
    export_checkpoint(tmp_path / "first", seg_dir)
    run = tmp_path / "run"
    train("joint", tiny(steps=3, checkpoint_every=3, validate_every=1, snapshots=True, frozen=("seg",)), run, quiet=True,
          init_from=seg_dir)
    script = [sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "checkpoint_parts.py")]
    recon_bytes = len(_bytes(torch.load(run / "checkpoint.pt", weights_only=True)["models"]["recon"]))
    done = subprocess.run([*script, "pack", str(run), str(tmp_path / "parts"), "--drop-frozen", "--snapshots",
                           str(3.5 * recon_bytes / 2**20)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    index = json.loads((tmp_path / "parts" / "weights.parts.json").read_text())
    assert index["dropped_frozen"] == ["seg"] and index["snapshots"] == ["step000002.pt", "step000003.pt"]  # step 1 over budget
    done = subprocess.run([*script, "unpack", str(tmp_path / "parts"), str(tmp_path / "back")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    back = torch.load(tmp_path / "back" / "checkpoint.pt", weights_only=True)
    assert set(back["models"]) == {"recon"} and "packed_snapshots" not in back
    for name in ("step000002.pt", "step000003.pt"):
        a = torch.load(run / "snapshots" / name, weights_only=True)["models"]["recon"]
        b = torch.load(tmp_path / "back" / "snapshots" / name, weights_only=True)["models"]["recon"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name for p in export_checkpoint(tmp_path / "back" / "snapshots" / "step000002.pt", tmp_path / "exp")] == ["recon.json"]
    # a network missing without having been frozen is an error, not a silent partial export
    del back["dropped_frozen"]
    torch.save(back, tmp_path / "back" / "checkpoint.pt")
    with pytest.raises(InputError, match="lacks the seg"):
        export_checkpoint(tmp_path / "back", tmp_path / "exp2")
    tight = subprocess.run([*script, "pack", str(run), str(tmp_path / "p2"), "--snapshots", "0.001"], capture_output=True, text=True)
    assert tight.returncode == 2 and "over max_bytes" in tight.stderr


def test_snapshots_keep_each_validated_step_exportable_but_not_resumable(tmp_path):
    """With ``snapshots`` every validation also keeps that step's weights, so a run's steps can be
    compared on whole heads afterwards; the last checkpoint alone cannot give an earlier step."""
    from pedq_deploy.export import export_checkpoint
    from pedq_deploy.training.trainer import train

    run = tmp_path / "run"
    train("tv", tiny(steps=4, checkpoint_every=4, validate_every=2, snapshots=True), run, quiet=True)
    snaps = sorted(p.name for p in (run / "snapshots").iterdir())
    assert snaps == ["step000002.pt", "step000004.pt"]
    two = torch.load(run / "snapshots" / "step000002.pt", weights_only=True)
    four = torch.load(run / "snapshots" / "step000004.pt", weights_only=True)
    last = torch.load(run / "checkpoint.pt", weights_only=True)
    assert two["step"] == 2 and four["step"] == 4 and "optimizer" not in two
    for k, v in last["models"]["recon"].items():  # the last snapshot is the checkpoint's weights
        torch.testing.assert_close(four["models"]["recon"][k], v, rtol=0, atol=0)
    assert any(not torch.equal(two["models"]["recon"][k], v) for k, v in last["models"]["recon"].items())
    manifest = json.loads(export_checkpoint(run / "snapshots" / "step000002.pt", tmp_path / "exported")[0].read_text())
    assert manifest["training"]["steps"] == 2 and manifest["training"]["validation_log"].startswith("step,")
    # scripts/snapshot_models.sh: the snapshot's U-Net with the shipped masking and segmentation
    # networks, as one models folder for the benchmarks' --models
    script = Path(__file__).resolve().parents[1] / "scripts" / "snapshot_models.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(script), str(run), "2", str(tmp_path / "models")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["mask.json", "mask.onnx", "recon.json", "recon.onnx", "seg.json", "seg.onnx"]
    assert json.loads((tmp_path / "models" / "recon.json").read_text())["training"]["steps"] == 2
    missing = subprocess.run(["bash", str(script), str(run), "3", str(tmp_path / "none")], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "no snapshot" in missing.stderr and not (tmp_path / "none").exists()
    # scripts/average_snapshots.py: the U-Net's weights averaged over the snapshots, as the last
    # step's snapshot, so snapshot_models.sh exports the average
    average = [sys.executable, str(script.with_name("average_snapshots.py")), str(run)]
    done = subprocess.run([*average, str(tmp_path / "avg")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    avg = torch.load(tmp_path / "avg" / "snapshots" / "step000004.pt", weights_only=True)
    assert avg["averaged_steps"] == [2, 4] and avg["step"] == 4
    for k, v in avg["models"]["recon"].items():
        want = (two["models"]["recon"][k] + four["models"]["recon"][k]) / 2 if v.is_floating_point() else four["models"]["recon"][k]
        torch.testing.assert_close(v, want, rtol=1e-6, atol=1e-7)
    too_few = subprocess.run([*average, str(tmp_path / "avg4"), "--from-step", "3"], capture_output=True, text=True)
    assert too_few.returncode == 2 and "fewer than 2 snapshots" in too_few.stderr and not (tmp_path / "avg4").exists()
    with pytest.raises(InputError, match="snapshots must be"):
        load_config(None, snapshots="yes")
    # an operational field: a run resumes with it switched off
    train("tv", tiny(steps=5, checkpoint_every=4, validate_every=2), run, quiet=True)
    assert len(list((run / "snapshots").iterdir())) == 2


def test_sigterm_checkpoints_and_takes_the_data_workers_down(tmp_path):
    """A scheduler's (or `timeout`'s) SIGTERM ends the run after the step in hand, with a checkpoint
    and exit 0; the data workers go too, so a pipe from the run closes (communicate returns)."""
    import signal
    import time

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**TINY, "steps": 10000, "validate_every": 10000, "checkpoint_every": 10000}))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", "from pedq_deploy.cli.train import main; main()", "tv", "--config", str(cfg),
                             "--out", str(out), "--data-workers", "2", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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


def test_a_repeat_scan_target_differs_from_the_input_by_independent_noise_only():
    """model_target="repeat" (Noise2Noise): L_model's field is a second scan of the same head at the
    same echo time. Without noise the two fields are the same; with noise their differences from
    the noiseless field are uncorrelated and equally large. (Air has no signal, so its phase is
    noise at any SNR, and the Laplacian unwrapping carries a trace of it into the brain: hence
    "the same" to 1% of the field's range.)"""
    from pedq_deploy.training.data import _subject_for

    clean = _subject_for(tiny(model_target="repeat", snr_range=(1e9, 1e9)), 0, True)
    noisy = _subject_for(tiny(model_target="repeat", snr_range=(40.0, 40.0)), 0, True)
    m = clean.params["loss_mask"]
    scale = np.abs(clean.local_field[m]).max()
    np.testing.assert_allclose(clean.params["target_field"][m], clean.local_field[m], atol=0.01 * scale)
    n1 = (noisy.local_field - clean.local_field)[m]
    n2 = (noisy.params["target_field"] - clean.local_field)[m]
    assert abs(np.corrcoef(n1, n2)[0, 1]) < 0.1
    assert 0.8 < n2.std() / n1.std() < 1.25
    assert n1.std() > 0.2 * clean.local_field[m].std()  # the noise is not negligible at SNR 40

    tr = Trainer("recon", tiny(model_target="repeat"), "unused")
    batch = tr._tensors(tr.stream.next_batch())
    assert not torch.equal(batch["target"], batch["field"])
    with torch.no_grad():
        chi = tr.reconstruct(batch)
        args = (batch["weight"], batch["mask"], batch["direction"], (tr.cfg.frame_voxel,) * 3, batch["rad_per_ppm"])
        k = batch["rad_per_ppm"][:, None, None, None]
        want = float(model_loss(chi[:, 0], batch["target"][:, 0] * k, *args))
        assert float(tr.losses(batch)["model"]) == pytest.approx(want, rel=1e-6)
        assert want != pytest.approx(float(model_loss(chi[:, 0], batch["field"][:, 0] * k, *args)), rel=1e-3)
    # the source study's target is the input itself
    sample = PhantomStream(tiny()).next_sample()
    assert sample.target_ppm is sample.field_ppm
    with pytest.raises(InputError, match="model_target"):
        load_config(None, model_target="other")


def test_the_amplitude_normalised_u_net_is_linear_in_the_field_and_exports(tmp_path):
    """The inversion is linear: chi(a y) = a chi(y). The plain U-Net's instance norms discard the
    input's amplitude (its output does not grow with the field); recon_amplitude_ref makes it linear,
    takes the plain network's weights unchanged, and survives ONNX export."""
    import onnxruntime as ort

    from pedq_deploy.export.onnx import export_network
    from pedq_deploy.training.networks import ReconNet

    torch.manual_seed(0)
    plain = ReconNet(tiny()).eval()
    linear = ReconNet(tiny(recon_amplitude_ref=0.5)).eval()
    linear.load_state_dict(plain.state_dict())  # strict: the same parameters and buffers
    x = torch.randn(1, 1, 16, 16, 16) * 0.01  # ppm
    with torch.no_grad():
        p1, l1 = plain(x), linear(x)
        for a in (0.1, 4.0):
            torch.testing.assert_close(plain(a * x), p1, rtol=1e-3, atol=1e-3 * float(p1.abs().max()))  # blind to amplitude
            torch.testing.assert_close(linear(a * x), a * l1, rtol=1e-4, atol=1e-5 * a * float(l1.abs().max()))
    export_network(linear, "recon", 1, (16, 16, 16), tmp_path, voxel_size=(3.0,) * 3)
    sess = ort.InferenceSession(str(tmp_path / "recon.onnx"), providers=["CPUExecutionProvider"])
    y1 = sess.run(["output"], {"input": x.numpy()})[0]
    y3 = sess.run(["output"], {"input": 3 * x.numpy()})[0]
    np.testing.assert_allclose(y3, 3 * y1, rtol=1e-3, atol=1e-4 * np.abs(y3).max())
    with pytest.raises(InputError, match="recon_amplitude_ref"):
        load_config(None, recon_amplitude_ref=-1.0)


def test_the_smoothed_brain_amplitude_ignores_noise_and_empty_space_and_exports(tmp_path):
    """recon_amplitude_smooth: s is the RMS of the box-smoothed field over the brain voxels. White
    noise as strong as the field inflates the window RMS sqrt(2)-fold but changes the smoothed one by at most
    10%; zeros around the brain (a window at the brain's edge) lower the window RMS and leave the
    smoothed one unchanged. The network stays exactly linear, in PyTorch and onnxruntime."""
    import onnxruntime as ort

    from pedq_deploy.export.onnx import export_network
    from pedq_deploy.training.networks import ReconNet

    torch.manual_seed(0)
    raw = ReconNet(tiny(recon_amplitude_ref=0.5)).eval()
    smooth = ReconNet(tiny(recon_amplitude_ref=0.5, recon_amplitude_smooth=5)).eval()
    smooth.load_state_dict(raw.state_dict())
    g = torch.arange(32, dtype=torch.float32) - 15.5
    z, y, x = torch.meshgrid(g, g, g, indexing="ij")
    field = torch.sin(x / 4.0) * torch.cos(y / 5.0) * torch.sin(z / 6.0 + 0.3)  # features ~ 10 voxels
    field = (field / field.square().mean().sqrt())[None, None]
    noise = torch.randn(field.shape)  # as strong as the field
    with torch.no_grad():
        r0, r1 = raw._amplitude(field), raw._amplitude(field + noise)
        s0, s1 = smooth._amplitude(field), smooth._amplitude(field + noise)
        assert float(r1 / r0) == pytest.approx(np.sqrt(2), rel=0.02)
        assert float(s1 / s0) == pytest.approx(1.0, abs=0.10)
        # the same brain in a window twice as wide: 7/8 of it is empty space
        big = torch.zeros(1, 1, 64, 64, 64)
        big[..., 16:48, 16:48, 16:48] = field + noise
        assert float(raw._amplitude(big) / r1) == pytest.approx(np.sqrt(1 / 8), rel=1e-3)
        inner = torch.zeros(1, 1, 40, 40, 40)
        inner[..., 4:36, 4:36, 4:36] = field + noise
        assert float(smooth._amplitude(big) / smooth._amplitude(inner)) == pytest.approx(1.0, abs=1e-5)
        x16 = field[..., :16, :16, :16] * 0.01
        l1 = smooth(x16)
        for a in (0.1, 4.0):
            torch.testing.assert_close(smooth(a * x16), a * l1, rtol=1e-4, atol=1e-5 * a * float(l1.abs().max()))
    export_network(smooth, "recon", 1, (16, 16, 16), tmp_path, voxel_size=(3.0,) * 3)
    sess = ort.InferenceSession(str(tmp_path / "recon.onnx"), providers=["CPUExecutionProvider"])
    xn = x16.numpy()
    y1 = sess.run(["output"], {"input": xn})[0]
    np.testing.assert_allclose(y1, l1.numpy(), rtol=1e-3, atol=1e-4 * np.abs(y1).max())
    np.testing.assert_allclose(sess.run(["output"], {"input": 3 * xn})[0], 3 * y1, rtol=1e-3, atol=1e-4 * np.abs(y1).max())
    for k in (1, 4, -3, 2.0):
        with pytest.raises(InputError, match="recon_amplitude_smooth"):
            load_config(None, recon_amplitude_smooth=k)


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
    monkeypatch.setattr(data, "subject_local_field", lambda s, *a, unwrap, **kw: asked.append(unwrap) or subject_local_field(s, *a, unwrap=unwrap, **kw))
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
        np.testing.assert_array_equal(sample.field_ppm[o[0]:o[0] + x.shape[0], o[1]:o[1] + x.shape[1], o[2]:o[2] + x.shape[2]], x)
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
    brain = models.mask(ref.magnitude, ref.voxel_size)
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
    models = PedqModels(tmp_path / "models", backend="onnxruntime")
    brain = models.mask(true.magnitude, true.voxel_size)
    models.close()
    assert not np.array_equal(brain, true.brain_mask)
    local, eroded = subject_local_field(true, unwrap="laplacian", mask=brain)
    np.testing.assert_array_equal(s.local_field, local)
    np.testing.assert_array_equal(s.params["loss_mask"], eroded)
    assert not np.array_equal(s.params["loss_mask"], true.params["loss_mask"])

    cfg = tmp_path / "c.json"
    for bad, match in (({"recon_network_mask": 1.5}, "share"), ({"recon_network_mask": 0.5, "seg_network_mask": 0.5}, "give one"),
                       ({"recon_network_mask": 0.5, "model_target": "repeat"}, "repeat")):
        cfg.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=match):
            load_config(cfg)
    with pytest.raises(InputError, match="no mask network"):
        Trainer("recon", tiny(recon_network_mask=0.5, mask_model=str(tmp_path)), tmp_path / "run")
    with pytest.raises(InputError, match="not mask"):
        Trainer("mask", tiny(recon_network_mask=0.5, mask_model=str(tmp_path / "models")), tmp_path / "run")
