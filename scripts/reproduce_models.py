"""Reproduce the shipped models (export/) from their lineage, as their manifests record it.

    python scripts/reproduce_models.py plan          # the training stages, in order, with their commands
    python scripts/reproduce_models.py check         # configs/ agrees with the manifests' lineage (a test runs it)
    python scripts/reproduce_models.py write         # write configs/ from the manifests (after shipping new models)
    python scripts/reproduce_models.py run [--dry-run] [--device cpu|cuda] [--out runs/reproduce]

Each shipped network's manifest (``export/ROLE.json``) records the training run that made it: its
kind, config, step count and hardware, and the exported models it started from (``init_from``),
each with its own record, down to the first run from random weights. Those runs form a graph; a
run is one stage here, named by the kind and the first 8 hex digits of its checkpoint's sha256.
``configs/STAGE.json`` holds each stage's config, and ``run`` trains the stages in order
(``pedq-train KIND --config configs/STAGE.json --steps N [--init-from ...]``), exports each one and
assembles ``OUT/export`` as ``export/`` is laid out.

Two config fields name a models folder by a path that was ``export`` at the time (``seg_recon``: the
reconstruction network whose maps a seg run learns on, and its masking network with
``seg_network_mask``; ``mask_model``: the masking network that masks a share of heads). ``run``
gives each stage a folder of the networks it used then: those its record names (``uses``, which
``pedq-train`` writes), or for a stage older than that record, a pin below where the git history
shows another network was shipped then, or else the latest stage of that network that does not
itself descend from the stage being trained.

A reproduction gives the same networks only up to the nondeterminism of the hardware's kernels;
stages that ran on a GPU take hours on a CPU (``plan`` says where each ran).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {"mask": "export/mask.json", "recon": "export/recon.json", "seg": "export/seg.json", "nnunet_tv": "export/nnunet_tv/recon.json"}
# options a shipped stage may record that the package no longer has; each was off (this value) in every shipped stage
RETIRED = {
    "recon_amplitude_ref": 0.0,
    "recon_amplitude_smooth": 0,
    "model_target": "input",
    "lr_schedule": "constant",
    "lr_warmup_steps": 0,
    "subjects_per_batch": 1,
    "snapshots": False,
}
# Stages trained before the record named the networks they used (``uses``) leave "the latest stage
# before" to a guess by dependency order; where the git history shows that a network was shipped
# anew after a stage that used it (export/mask.json in the commit that shipped the stage), this
# names what that stage used: (stage, role) -> the used stage's name.
USED_THEN = {
    ("joint-41adfe85", "mask"): "mask-57d8c57d",
    ("seg-33339a05", "mask"): "mask-57d8c57d",
    # started before the record existed; export/ then held these two
    ("seg-953a410e", "recon"): "joint-41adfe85",
    ("seg-953a410e", "mask"): "mask-e117a9d8",
}


def references(stage: Stage) -> dict[str, tuple[str, ...]]:
    """The config fields of ``stage`` that name a models folder, each with the networks it used
    from there (as ``pedq-train`` records them)."""
    from pedq_deploy.training.config import referenced_roles

    return referenced_roles(stage.kind, stage.config)


class Stage:
    def __init__(self, record: dict):
        self.record = record
        self.sha = record["checkpoint_sha256"]
        self.kind = record["kind"]
        self.name = f"{self.kind}-{self.sha[:8]}"
        self.steps = int(record["steps"])
        self.config = dict(record["config"])
        self.hardware = record.get("hardware") or []
        # role -> (parent stage sha, the role of the parent's network)
        self.inputs = {role: (v["training"]["checkpoint_sha256"], role) for role, v in (record.get("init_from") or {}).items()}


def lineage(repo: Path = REPO) -> tuple[dict[str, Stage], dict[str, tuple[str, str]]]:
    """Every stage behind the shipped models (sha -> Stage, in dependency order) and where each
    shipped file comes from (shipped name -> (stage sha, role))."""
    stages: dict[str, Stage] = {}

    def walk(record: dict) -> str:
        for sub in (record.get("init_from") or {}).values():
            walk(sub["training"])
        sha = record["checkpoint_sha256"]
        stages.setdefault(sha, Stage(record))
        return sha

    shipped = {}
    for name, manifest in SHIPPED.items():
        meta = json.loads((repo / manifest).read_text())
        shipped[name] = (walk(meta["training"]), meta["role"])
    return stages, shipped


def _descendants(stages: dict[str, Stage], sha: str) -> set[str]:
    out, grew = {sha}, True
    while grew:
        grew = False
        for s in stages.values():
            if s.sha not in out and any(parent in out for parent, _ in s.inputs.values()):
                out.add(s.sha)
                grew = True
    return out


def model_ref(stages: dict[str, Stage], stage: Stage, role: str) -> str:
    """The stage whose ``role`` network an ``export`` reference of ``stage`` meant: the one its
    record names, else the pinned one, else the latest one (in dependency order) that has that
    network and does not descend from ``stage``."""
    for roles in (stage.record.get("uses") or {}).values():
        sha = (roles.get(role) or {}).get("checkpoint_sha256")
        if sha:
            if sha not in stages:
                raise SystemExit(f"reproduce: {stage.name} used a {role} network of a stage outside the shipped lineage ({sha[:8]})")
            return sha
    used = USED_THEN.get((stage.name, role))
    if used:
        return next(s.sha for s in stages.values() if s.name == used)
    later = _descendants(stages, stage.sha)
    # the nnU-Net_TV ablation (a tv run) ships apart, in export/nnunet_tv: never what "export" meant
    having = [s.sha for s in stages.values() if s.sha not in later and s.kind != "tv" and role in _roles(s)]
    if not having:
        raise SystemExit(f"reproduce: no stage before {stage.name} trains a {role} network")
    return having[-1]


def _roles(stage: Stage) -> tuple[str, ...]:
    return {"mask": ("mask",), "recon": ("recon",), "tv": ("recon",), "joint": ("recon", "seg"), "seg": ("seg",)}[stage.kind]


def stage_config(stage: Stage) -> dict:
    """The stage's config as configs/ holds it: the package's current fields only, and for a field
    the stage predates, what it amounted to then (``LEGACY``)."""
    from pedq_deploy.training.config import LEGACY, TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    return {**{k: v for k, v in LEGACY.items() if k not in stage.config}, **{k: v for k, v in stage.config.items() if k in known}}


def check(repo: Path = REPO) -> list[str]:
    """Disagreements between configs/ and the shipped manifests' lineage (empty: none)."""
    from pedq_deploy.training.config import TrainConfig, load_config

    stages, _ = lineage(repo)
    problems = []
    want = {f"{s.name}.json" for s in stages.values()}
    have = {p.name for p in (repo / "configs").glob("*.json")}
    problems += [f"configs/{n} is missing" for n in sorted(want - have)]
    problems += [f"configs/{n} belongs to no stage of the shipped models" for n in sorted(have - want)]
    defaults = json.loads(TrainConfig().to_json())
    for s in stages.values():
        for k, v in s.config.items():
            if k not in defaults and k in RETIRED and v != RETIRED[k]:
                problems.append(f"{s.name} used {k}={v!r}, an option the package no longer has")
            elif k not in defaults and k not in RETIRED:
                problems.append(f"{s.name} records {k!r}, unknown to the package")
        path = repo / "configs" / f"{s.name}.json"
        if not path.is_file():
            continue
        cfg = json.loads(load_config(path).to_json())
        recorded = {**defaults, **stage_config(s)}
        differ = sorted(k for k in defaults if cfg[k] != recorded.get(k, defaults[k]))
        problems += [f"configs/{s.name}.json: {k} is {cfg[k]!r}, the manifest records {recorded[k]!r}" for k in differ]
    return problems


def write(repo: Path = REPO) -> None:
    stages, _ = lineage(repo)
    folder = repo / "configs"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.json"):
        old.unlink()
    for s in stages.values():
        cfg = stage_config(s)
        (folder / f"{s.name}.json").write_text("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in cfg.items()) + "\n}\n")


def plan(out: Path, device: str | None = None) -> list[list[str]]:
    """The commands that reproduce every stage and assemble ``out/export``."""
    stages, shipped = lineage()
    cmds: list[list[str]] = []
    bin_ = lambda tool: str(Path(sys.executable).parent / tool)  # noqa: E731
    for s in stages.values():
        run, exported = out / s.name, out / f"{s.name}_export"
        cmd = [bin_("pedq-train"), s.kind, "--config", f"configs/{s.name}.json", "--out", str(run), "--steps", str(s.steps), "-q"]
        if device:
            cmd += ["--device", device]
        if s.inputs:
            start = out / f"{s.name}_init"
            cmds.append(["mkdir", "-p", str(start)])
            for role, (parent, prole) in s.inputs.items():
                src = out / f"{stages[parent].name}_export"
                cmds += [
                    ["cp", str(src / f"{prole}.onnx"), str(start / f"{role}.onnx")],
                    ["cp", str(src / f"{prole}.json"), str(start / f"{role}.json")],
                ]
            cmd += ["--init-from", str(start), "--init-roles", ",".join(s.inputs)]
        for field, roles in references(s).items():  # "export" at the time: what was shipped then
            folder = out / f"{s.name}_{field}"
            cmds.append(["mkdir", "-p", str(folder)])
            for role in roles:
                src = out / f"{stages[model_ref(stages, s, role)].name}_export"
                cmds += [["cp", str(src / f"{role}.{ext}"), str(folder / f"{role}.{ext}")] for ext in ("onnx", "json")]
            patched = out / f"{s.name}.config.json"
            cmds.append(
                [
                    sys.executable,
                    "-c",
                    "import json,sys; c=json.load(open(sys.argv[1])); c[sys.argv[2]]=sys.argv[3]; "
                    "json.dump(c, open(sys.argv[4], 'w'), indent=2)",
                    cmd[cmd.index("--config") + 1],
                    field,
                    str(folder),
                    str(patched),
                ]
            )
            cmd[cmd.index("--config") + 1] = str(patched)
        cmds += [cmd, [bin_("pedq-export"), str(run), "-o", str(exported)]]
    final = out / "export"
    cmds.append(["mkdir", "-p", str(final / "nnunet_tv")])
    for name, (sha, role) in shipped.items():
        dest = final / "nnunet_tv" if name == "nnunet_tv" else final
        src = out / f"{stages[sha].name}_export"
        cmds += [
            ["cp", str(src / f"{role}.onnx"), str(dest / f"{role}.onnx")],
            ["cp", str(src / f"{role}.json"), str(dest / f"{role}.json")],
        ]
    return cmds


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="reproduce_models.py", description=__doc__.splitlines()[0])
    p.add_argument("verb", choices=("plan", "check", "write", "run"))
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--dry-run", action="store_true", help="with run: print the commands only")
    a = p.parse_args(argv)
    if a.verb == "check":
        problems = check()
        for line in problems:
            print(f"reproduce: {line}", file=sys.stderr)
        print(f"reproduce: configs/ {'disagrees with' if problems else 'agrees with'} the shipped models' lineage")
        return 1 if problems else 0
    if a.verb == "write":
        write()
        return 0
    if a.verb == "plan":
        stages, shipped = lineage()
        for s in stages.values():
            inputs = ", ".join(f"{r} from {stages[p].name}" for r, (p, _) in s.inputs.items()) or "random weights"
            refs = ", ".join(
                f"{f} = " + " + ".join(f"{r} of {stages[model_ref(stages, s, r)].name}" for r in roles)
                for f, roles in references(s).items()
            )
            print(
                f"{s.name}: {s.kind}, {s.steps} steps on {'; '.join(s.hardware) or '?'}, "
                f"{s.record.get('train_seconds', 0) / 60:.0f} min; starts from {inputs}" + (f"; {refs}" if refs else "")
            )
        for name, (sha, role) in shipped.items():
            print(f"shipped {name}: the {role} network of {stages[sha].name}")
        return 0
    out = Path(a.out)
    for cmd in plan(out, a.device):
        print("+ " + " ".join(cmd), flush=True)
        if not a.dry_run:
            subprocess.run(cmd, cwd=REPO, check=True)
    if not a.dry_run:
        shutil.copy(REPO / "export" / "README.md", out / "export" / "README.md")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
