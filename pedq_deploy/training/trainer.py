"""The training loop of ``pedq-train``: resumable, seeded, logged, validated on held-out phantoms."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .. import metrics as M
from ..errors import InputError
from .config import KINDS, LEGACY, OPERATIONAL, TrainConfig, referenced_roles
from .data import PhantomStream, Sample, draw_sample, prepare_subject, require_exported, require_seg_recon, seg_subject
from .losses import model_loss, tv_loss
from .networks import SEG_CLASSES, build

__all__ = ["Trainer", "train"]

CHECKPOINT = "checkpoint.pt"


def model_references(kind: str, cfg: TrainConfig) -> dict:
    """The exported networks a run's data comes from, by config field and role: the maps a seg
    run learns on (``seg_recon``: its recon network, and its masking network with
    ``seg_network_mask``) and the masking network of ``mask_model`` (with ``recon_network_mask``).
    Each is named by its file's sha256 and the checkpoint it was exported from, so the run's
    record says what it used after the folder's models are replaced."""
    refs: dict = {}
    for field, roles in referenced_roles(kind, cfg.__dict__).items():
        folder = Path(getattr(cfg, field))
        for role in roles:
            try:
                meta = json.loads((folder / f"{role}.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue  # the data stream's own checks say what is missing
            refs.setdefault(field, {})[role] = {
                "sha256": meta.get("sha256"),
                "checkpoint_sha256": (meta.get("training") or {}).get("checkpoint_sha256"),
            }
    return refs


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _labels_to_classes(labels: np.ndarray) -> np.ndarray:
    out = np.zeros(labels.shape, np.int64)
    for i, fs in enumerate(SEG_CLASSES[1:], start=1):
        out[labels == fs] = i
    return out


class Trainer:
    def __init__(self, kind: str, cfg: TrainConfig, outdir: str | Path):
        if kind not in KINDS:
            raise InputError(f"unknown training kind {kind!r} ({', '.join(KINDS)})")
        self.kind, self.cfg, self.out = kind, cfg, Path(outdir)
        self.device = _device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.models = {k: m.to(self.device) for k, m in build(kind, cfg).items()}
        self.frozen = tuple(cfg.frozen)
        if set(self.frozen) - set(self.models) or len(set(self.frozen)) >= len(self.models):
            raise InputError(
                f"frozen {list(self.frozen)}: a {kind} run has the networks {', '.join(self.models)}, and one at least must train"
            )
        for k in self.frozen:
            self.models[k].requires_grad_(False)
        # one parameter group per network: a transformer (the segmentation UNETR) wants a smaller
        # step than the convolutional reconstruction U-Net
        groups = [
            {"params": list(m.parameters()), "lr": cfg.seg_lr if (k == "seg" and cfg.seg_lr is not None) else cfg.lr}
            for k, m in self.models.items()
            if k not in self.frozen
        ]
        self.opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if kind == "seg":  # before any data worker starts
            require_seg_recon(cfg)
        if cfg.recon_network_mask > 0:
            if kind not in ("joint", "recon", "tv"):
                raise InputError(f"recon_network_mask is for the joint, recon and tv runs, not {kind}")
            require_exported(cfg.mask_model, "mask")  # the data workers open it
        self.stream = PhantomStream(
            cfg,
            brain_fraction=0.5 if kind == "mask" else 0.9,
            frame="seg" if kind == "seg" else kind != "mask",
            foreground_fraction=cfg.foreground_fraction if kind in ("joint", "seg") else 0.0,
            workers=cfg.data_workers,
        )
        if self.device.type == "cuda":  # fixed patch shapes: let cuDNN pick its fastest kernels; TF32 matrix products
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")
        self.step = 0
        self.data_seconds = 0.0
        self.train_seconds = 0.0  # wall time of all training steps, over every resume
        self.hardware: list[str] = []  # where the steps ran (one entry per resume on other hardware)
        self._seg_loss = self._mask_loss = None
        if kind in ("joint", "mask", "seg"):
            from monai.losses import DiceCELoss

            loss = DiceCELoss(to_onehot_y=True, softmax=True)
            self._seg_loss = loss if kind in ("joint", "seg") else None
            self._mask_loss = loss if kind == "mask" else None
        self._val = None
        self.init_from: dict = {}  # the exported models this run started from (fine-tuning), if any
        self.uses: dict = model_references(kind, cfg)  # the exported models its data comes from

    def init_from_models(self, folder: str | Path, roles: tuple[str, ...] | None = None) -> dict:
        """Start from exported models (``ROLE.onnx`` + ``ROLE.json`` in ``folder``) instead of random weights.

        ``roles``: the networks to load (default: all of this run's); the others keep their random
        initialisation (e.g. a fresh segmentation UNETR on a trained reconstruction U-Net).
        Their manifests' training provenance is kept, so the run's own steps and time add to theirs."""
        from .warmstart import load_onnx_weights

        folder = Path(folder)
        if roles is not None:
            unknown = sorted(set(roles) - set(self.models))
            if unknown or not roles:
                raise InputError(f"--init-roles {','.join(roles)}: a {self.kind} run has the networks {', '.join(self.models)}")
        done = {}
        for role, net in self.models.items():
            if roles is not None and role not in roles:
                continue
            manifest = folder / f"{role}.json"
            if not manifest.is_file():
                raise InputError(f"--init-from {folder}: no {role}.json (the {self.kind} run needs {', '.join(self.models)})")
            try:
                meta = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"cannot read {manifest}: {exc}") from None
            patch = tuple(meta.get("patch") or ())
            want = tuple(
                self.cfg.recon_window
                if (role == "recon" and self.kind == "joint")
                else self.cfg.seg_region
                if role == "seg"
                else self.cfg.patch
            )
            if patch != want:
                raise InputError(f"{manifest}: patch {list(patch)} differs from this config's {list(want)}")
            example = torch.zeros(1, 1, *patch, device=self.device)
            summary = load_onnx_weights(net, folder / meta.get("file", f"{role}.onnx"), example)
            done[role] = {"file": summary["file"], "sha256": meta.get("sha256"), "training": meta.get("training", {})}
        self.init_from = done
        return done

    def close(self) -> None:
        """Stop the data workers (if any)."""
        self.stream.close()

    # ---- batches ---------------------------------------------------------------------------
    def _tensors(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        st = lambda name: torch.from_numpy(np.stack([getattr(s, name) for s in samples])).to(self.device)  # noqa: E731
        batch = {
            "field": st("field_ppm")[:, None],
            "mask": st("mask"),
            "weight": st("weight"),
            "direction": st("direction"),
            "rad_per_ppm": torch.tensor([s.rad_per_ppm for s in samples], device=self.device),
            "magnitude": st("magnitude")[:, None],
            "brain": st("brain")[:, None],
        }
        if self.kind in ("joint", "seg"):  # only the segmentation loss needs class indices
            batch["classes"] = torch.from_numpy(np.stack([_labels_to_classes(s.labels) for s in samples]))[:, None].to(self.device)
        return batch

    def reconstruct(self, batch) -> torch.Tensor:
        """chi (B, 1, X, Y, Z); in joint training by sliding window over the whole region, with gradients."""
        x = batch["field"]
        net = self.models["recon"]
        if self.kind == "joint" and tuple(self.cfg.recon_window) != tuple(x.shape[2:]):
            from monai.inferers import sliding_window_inference

            return sliding_window_inference(x, self.cfg.recon_window, 1, net, overlap=0.25, mode="gaussian")
        return net(x)

    def seg_input(self, chi: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """What the segmentation UNETR sees of chi (B, 1, X, Y, Z): with ``seg_input="masked"``, as
        pedq-run gives it (the eroded mask, referenced to chi's mean there, zero outside)."""
        if self.cfg.seg_input == "raw":
            return chi
        m = (mask > 0)[:, None]
        mean = (chi * m).sum(dim=(2, 3, 4), keepdim=True) / m.sum(dim=(2, 3, 4), keepdim=True).clamp(min=1)
        return torch.where(m, chi - mean, torch.zeros_like(chi))

    def losses(self, batch) -> dict[str, torch.Tensor]:
        if self.kind == "mask":
            logits = self.models["mask"](batch["magnitude"])
            return {"total": self._mask_loss(logits, batch["brain"].long())}
        if self.kind == "seg":  # the input is the reconstruction network's chi, as pedq-run gives it
            loss = self._seg_loss(self.models["seg"](batch["field"]), batch["classes"])
            return {"seg": loss, "total": loss}
        chi = self.reconstruct(batch)
        lm = model_loss(
            chi[:, 0],
            batch["field"][:, 0] * batch["rad_per_ppm"][:, None, None, None],
            batch["weight"],
            batch["mask"],
            batch["direction"],
            (self.cfg.frame_voxel,) * 3,
            batch["rad_per_ppm"],
        )
        out = {"model": lm}
        if self.kind == "tv":
            out["tv"] = tv_loss(chi[:, 0], batch["mask"])
            out["total"] = lm + self.cfg.lambda_tv * out["tv"]
        elif self.kind == "joint":
            out["seg"] = self._seg_loss(self.models["seg"](self.seg_input(chi, batch["mask"])), batch["classes"])
            out["total"] = lm + self.cfg.lambda_seg * out["seg"]
        else:
            out["total"] = lm
        return out

    def train_step(self, samples: list[Sample] | None = None) -> dict[str, float]:
        for k, m in self.models.items():
            m.train(k not in self.frozen)  # a frozen network runs as at inference (no dropout, fixed norms)
        t0 = time.perf_counter()
        batch = self._tensors(samples if samples is not None else self.stream.next_batch())
        self.data_seconds = time.perf_counter() - t0  # waiting for data (and copying it to the device)
        self.opt.zero_grad(set_to_none=True)
        parts = self.losses(batch)
        parts["total"].backward()
        self.opt.step()
        self.step += 1
        return {k: float(v.detach()) for k, v in parts.items()}

    # ---- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.kind == "seg":
            return self._validate_seg()
        if self._val is None:  # held-out subjects, one central-ish crop each, drawn once
            self._val = []
            for seed in self.cfg.val_seeds:
                s = prepare_subject(
                    seed, self.cfg, np.random.default_rng([seed, 99]), frame=self.kind != "mask", magnitude_only=self.kind == "mask"
                )
                # joint: a crop on the deep grey matter, so the segmentation Dice is defined
                self._val.append(draw_sample(s, np.random.default_rng(seed), self.cfg, 1.0, 1.0 if self.kind == "joint" else 0.0))
        for m in self.models.values():
            m.eval()
        rows = []
        for sample in self._val:
            batch = self._tensors([sample])
            if self.kind == "mask":
                pred = self.models["mask"](batch["magnitude"]).argmax(1)[0].cpu().numpy() > 0
                rows.append({"dice": M.dice(pred, sample.brain > 0)})
                continue
            raw = self.reconstruct(batch)
            chi = raw[0, 0].cpu().numpy() * sample.mask
            brain = sample.mask > 0
            ref = sample.chi - sample.chi[brain].mean() if brain.any() else sample.chi
            row = {"nrmse": M.nrmse(chi - chi[brain].mean(), ref, brain), "hfen": M.hfen(chi, ref, brain)}
            if self.kind == "joint":  # the UNETR's input as in training
                seg = self.models["seg"](self.seg_input(raw, batch["mask"])).argmax(1)[0].cpu().numpy()
                cls = _labels_to_classes(sample.labels)
                row["dgm_dice"] = float(
                    np.mean([M.dice(seg == c, cls == c) for c in range(1, len(SEG_CLASSES)) if (cls == c).any()] or [np.nan])
                )
            rows.append(row)
        return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}

    def _validate_seg(self) -> dict[str, float]:
        """Mean Dice of the 8 structures over the validation heads' whole deep grey matter boxes
        (sliding window, as pedq-run runs the exported network)."""
        from monai.inferers import sliding_window_inference

        if self._val is None:
            self._val = [seg_subject(seed, self.cfg, np.random.default_rng([seed, 99]), augment=False) for seed in self.cfg.val_seeds]
        net = self.models["seg"].eval()
        rows = []
        for s in self._val:
            x = torch.from_numpy(s.chi)[None, None].to(self.device)
            pred = sliding_window_inference(x, self.cfg.seg_region, 1, net, overlap=0.5, mode="gaussian").argmax(1)[0].cpu().numpy()
            pred[~s.mask] = 0
            cls = _labels_to_classes(s.labels)
            rows.append(np.mean([M.dice(pred == c, cls == c) for c in range(1, len(SEG_CLASSES))]))
        return {"dgm_dice": float(np.mean(rows))}

    # ---- checkpoints ---------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "kind": self.kind,
            "config": json.loads(self.cfg.to_json()),
            "step": self.step,
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "optimizer": self.opt.state_dict(),
            "stream": self.stream.state(),
            "torch_rng": torch.get_rng_state(),
            "train_seconds": self.train_seconds,
            "hardware": self.hardware,
            "init_from": self.init_from,
            "uses": self.uses,
        }

    @staticmethod
    def _write(state: dict, path: Path) -> Path:
        """``torch.save`` to a temporary name, renamed when complete."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        return path

    def save(self) -> None:
        self._write(self._state(), self.out / CHECKPOINT)

    def load(self) -> bool:
        path = self.out / CHECKPOINT
        if not path.is_file():
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["kind"] != self.kind:
            raise InputError(f"{path} holds a {state['kind']!r} run, not {self.kind!r}")
        if state.get("optimizer") is None:
            raise InputError(
                f"{path} holds weights only, no optimizer state to resume: export it and start a new run from the export with --init-from"
            )
        saved = dict(state["config"])
        mine = json.loads(self.cfg.to_json())
        default = {**json.loads(TrainConfig().to_json()), **LEGACY}  # what a field the checkpoint predates amounted to
        differ = sorted(k for k in mine if k not in OPERATIONAL and saved.get(k, default[k]) != mine[k])
        if differ:
            raise InputError(f"{path} was trained with another config ({', '.join(differ)} differ): use a new --out")
        for k, m in self.models.items():
            m.load_state_dict(state["models"][k])
        self.opt.load_state_dict(state["optimizer"])
        self.stream.restore(state["stream"])
        torch.set_rng_state(state["torch_rng"].cpu())  # map_location puts it on the GPU
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.hardware = list(state.get("hardware", []))
        self.init_from = dict(state.get("init_from") or {})
        if "uses" in state:  # a checkpoint older than the record has none: what it used is unknown
            changed = sorted(
                f"{field}/{role}.onnx"
                for field, roles in state["uses"].items()
                for role, ref in roles.items()
                if self.uses.get(field, {}).get(role) != ref
            )
            if changed:
                raise InputError(
                    f"{path}: the exported models its data comes from changed since it started ({', '.join(changed)}): "
                    "resume with the models it started with, or start a new run"
                )
        else:
            self.uses = {}
        return True


def _hardware(device: torch.device) -> str:
    import platform

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _append_row(path: Path, header: list[str], row: list) -> None:
    """One row of a CSV log, the header first when the file is new."""
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(header)
        w.writerow(row)


def _log_validation(tr: Trainer, val_path: Path) -> dict:
    val = tr.validate()
    _append_row(val_path, ["step", *sorted(val)], [tr.step, *(f"{val[k]:.6g}" for k in sorted(val))])
    return val


def _progress(step: int, total: int, parts: dict, sec: float, quiet: bool) -> None:
    if quiet:
        return
    width = 24
    done = int(width * step / max(total, 1))
    msg = f"\r[{'#' * done}{'.' * (width - done)}] {step}/{total} loss {parts['total']:.4g} {sec:.2f} s/step"
    sys.stderr.write(msg)
    sys.stderr.flush()


def train(
    kind: str,
    cfg: TrainConfig,
    outdir: str | Path,
    *,
    quiet: bool = False,
    time_limit_s: float | None = None,
    init_from: str | Path | None = None,
    init_roles: tuple[str, ...] | None = None,
) -> dict:
    """Train (or resume) until ``cfg.steps`` (or ``time_limit_s`` of this call, then checkpoint);
    returns a summary with the last losses and validation. ``init_from``: a folder of exported
    models to start a new run from (ignored when the run resumes from its checkpoint);
    ``init_roles``: only those networks start from it, the others from random weights."""
    tr = Trainer(kind, cfg, outdir)
    resumed = tr.load()
    if init_from is not None and not resumed:
        tr.init_from_models(init_from, roles=init_roles)
    unloaded = sorted(set(tr.frozen) - set(tr.init_from))
    if unloaded:  # a frozen network must come from somewhere: random weights would stay random
        tr.close()
        raise InputError(f"frozen {', '.join(unloaded)}: start the run from trained models (--init-from, with those roles)")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.to_json())
    log_path, val_path = out / "train_log.csv", out / "val_log.csv"
    if resumed and not quiet:
        sys.stderr.write(f"pedq-train: resuming {kind} from step {tr.step}\n")
    last, last_val, times, data_times = {}, {}, [], []
    # SIGTERM (a batch scheduler's or `timeout`'s stop) ends the run like the time limit: after the
    # step in hand, with a checkpoint, the data workers stopped
    stopped: list[str] = []
    previous, installed = None, threading.current_thread() is threading.main_thread()
    if installed:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append("SIGTERM"))
    start = time.monotonic()
    here = _hardware(tr.device)
    if here not in tr.hardware:
        tr.hardware.append(here)
    try:
        while tr.step < cfg.steps:
            if stopped or (time_limit_s is not None and time.monotonic() - start > time_limit_s):
                if tr.step and tr.step % cfg.validate_every:  # the weights it stops with are validated too
                    last_val = _log_validation(tr, val_path)
                tr.save()
                break
            t0 = time.perf_counter()
            last = tr.train_step()
            times.append(time.perf_counter() - t0)
            data_times.append(tr.data_seconds)
            tr.train_seconds += times[-1]
            _append_row(
                log_path, ["step", "seconds", *sorted(last)], [tr.step, f"{times[-1]:.3f}", *(f"{last[k]:.6g}" for k in sorted(last))]
            )
            _progress(tr.step, cfg.steps, last, times[-1], quiet)
            if tr.step % cfg.validate_every == 0 or tr.step == cfg.steps:
                last_val = _log_validation(tr, val_path)
            if tr.step % cfg.checkpoint_every == 0 or tr.step == cfg.steps:
                tr.save()
    finally:
        tr.close()
        if installed:
            signal.signal(signal.SIGTERM, previous)
    if not quiet:
        sys.stderr.write("\n")
    return {
        "kind": kind,
        "step": tr.step,
        "resumed": resumed,
        "finished": tr.step >= cfg.steps,
        "stopped_by": stopped[0] if stopped else None,
        "last_losses": last,
        "validation": last_val,
        "seconds_per_step": float(np.median(times)) if times else None,
        "data_seconds_per_step": float(np.mean(data_times)) if data_times else None,
        "device": str(tr.device),
    }
