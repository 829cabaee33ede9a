"""scripts/reproduce_models.py: configs/ holds every training stage behind the shipped models, as
their manifests record it, and the plan trains each stage after the stages it starts from."""

import importlib.util
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("reproduce_models", REPO / "scripts" / "reproduce_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_configs_agree_with_the_shipped_manifests_lineage():
    assert _script().check() == []


def test_a_config_that_drifts_from_its_manifest_is_reported(tmp_path):
    repro = _script()
    shutil.copytree(REPO / "export", tmp_path / "export")
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    stages, shipped = repro.lineage(tmp_path)
    mask_stage = stages[shipped["mask"][0]]
    path = tmp_path / "configs" / f"{mask_stage.name}.json"
    cfg = json.loads(path.read_text())
    cfg["lr"] = cfg.get("lr", 1e-3) * 2
    path.write_text(json.dumps(cfg))
    (tmp_path / "configs" / "extra.json").write_text("{}")
    problems = repro.check(tmp_path)
    assert any(f"{mask_stage.name}.json: lr" in p for p in problems)
    assert any("extra.json belongs to no stage" in p for p in problems)


def test_the_plan_trains_each_stage_after_the_ones_it_starts_from(tmp_path):
    repro = _script()
    out = tmp_path / "repro"
    made = set()
    for cmd in repro.plan(out):
        if cmd[0] == "cp":
            assert Path(cmd[1]).parent in made, cmd  # copied from an export made earlier
        if cmd[0].endswith("pedq-train"):
            config = cmd[cmd.index("--config") + 1]
            assert config.startswith(str(out)) or (REPO / config).is_file()
            assert int(cmd[cmd.index("--steps") + 1]) > 0
        if cmd[0].endswith("pedq-export"):
            made.add(Path(cmd[cmd.index("-o") + 1]))
    finals = [Path(c[2]) for c in repro.plan(out) if c[0] == "cp" and Path(c[2]).parent in (out / "export", out / "export" / "nnunet_tv")]
    assert {p.relative_to(out / "export").as_posix() for p in finals} == {
        "mask.onnx",
        "mask.json",
        "recon.onnx",
        "recon.json",
        "seg.onnx",
        "seg.json",
        "nnunet_tv/recon.onnx",
        "nnunet_tv/recon.json",
    }


def test_a_stage_that_used_the_shipped_mask_gets_the_one_shipped_then():
    # the masking network shipped anew after joint-41adfe85 trained; that stage masked its heads
    # with the one before, and a reproduction must too
    repro = _script()
    stages, shipped = repro.lineage()
    by_name = {s.name: s for s in stages.values()}
    joint = by_name["joint-41adfe85"]
    used = stages[repro.model_ref(stages, joint, "mask")]
    assert used.name == "mask-57d8c57d"
    assert stages[shipped["mask"][0]].name != used.name


def test_a_seg_stage_gets_the_masking_network_it_masked_its_heads_with():
    # seg-33339a05 masked half its heads with the masking network in export/ then (mask-57d8c57d,
    # as git shows); a reproduction gives its seg_recon folder that one beside the recon network
    repro = _script()
    stages, _ = repro.lineage()
    seg = next(s for s in stages.values() if s.name == "seg-33339a05")
    assert repro.references(seg) == {"seg_recon": ("recon", "mask")}
    assert stages[repro.model_ref(stages, seg, "mask")].name == "mask-57d8c57d"
    cmds = [" ".join(c) for c in repro.plan(repro.REPO / "runs" / "r")]
    folder = "runs/r/seg-33339a05_seg_recon"
    assert any(c.startswith("cp ") and "mask-57d8c57d_export/mask.onnx" in c and c.endswith(f"{folder}/mask.onnx") for c in cmds)
    assert any(c.startswith("cp ") and "joint-697ec489_export/recon.onnx" in c and c.endswith(f"{folder}/recon.onnx") for c in cmds)
