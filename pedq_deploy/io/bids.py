"""BIDS in (GRE / MEGRE runs with their sidecars) and BIDS derivatives out (QSM, masks, segmentation).

Input: ``sub-<label>/[ses-<label>/]anat/`` files named ``sub-<label>[_ses-<label>][_<key>-<value>...]``
``[_echo-<n>]_part-<mag|phase>_<T2starw|MEGRE>.nii[.gz]``. A run is the set of files that share every
entity but ``part`` and ``echo``. Its metadata follow the BIDS inheritance principle: every JSON
file from the dataset root down to the file's own folder whose entities are a subset of the file's
(and whose suffix is the same) applies, the nearer overriding the farther.

Output (BIDS Derivatives): per run ``<run>_Chimap.nii.gz`` (ppm) with a JSON sidecar that carries the
provenance, ``<run>_desc-brain_mask.nii.gz``, ``<run>_desc-dgm_dseg.nii.gz`` (FreeSurfer numbers,
``dseg.tsv`` at the root), ``<run>_desc-consistency_qcmap.nii.gz`` (no BIDS suffix exists for it:
listed in ``.bidsignore``), and a quick-look figure in ``sub-<label>/figures/``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .sidecar import echo_time_from_sidecar, field_strength_from_sidecar, read_json_object

__all__ = [
    "BidsEcho",
    "BidsRun",
    "find_runs",
    "inherited_metadata",
    "participant_ages",
    "DerivativeNames",
    "write_json_atomic",
    "write_text_atomic",
    "BIDS_VERSION",
]

BIDS_VERSION = "1.10.0"
SUFFIXES = ("T2starw", "MEGRE")
_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")
# the order BIDS gives the entities a file name may carry (anat): others are refused as not BIDS
_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "chunk")


def _parse(name: str) -> tuple[dict[str, str], str, str] | None:
    """``sub-01_echo-2_part-mag_MEGRE.nii.gz`` -> ({sub: 01, echo: 2, part: mag}, MEGRE, .nii.gz)."""
    for ext in (".nii.gz", ".nii", ".json"):
        if name.endswith(ext):
            stem = name[: -len(ext)]
            break
    else:
        return None
    parts = stem.split("_")
    ents: dict[str, str] = {}
    for p in parts[:-1]:
        m = _ENTITY.match(p)
        if not m or m.group(1) in ents:
            return None
        ents[m.group(1)] = m.group(2)
    return ents, parts[-1], ext


@dataclass
class BidsEcho:
    index: int | None  # the echo- entity (None for a single-echo T2starw run)
    magnitude: Path
    phase: Path
    echo_time: float | None = None  # seconds
    field_strength: float | None = None  # tesla


@dataclass
class BidsRun:
    subject: str  # label without "sub-"
    session: str | None
    entities: dict[str, str]  # every entity of the run but part and echo (sub and ses included)
    suffix: str
    folder: Path  # the anat folder
    echoes: list[BidsEcho] = field(default_factory=list)
    problem: str | None = None  # why the run cannot be processed (None: it can)

    @property
    def name(self) -> str:
        """The run's file-name stem without part, echo and suffix: ``sub-01_ses-1_acq-x_run-1``."""
        return "_".join(f"{k}-{self.entities[k]}" for k in _ORDER if k in self.entities and k not in ("part", "echo"))

    @property
    def echo_times(self) -> tuple[float, ...]:
        return tuple(float(e.echo_time) for e in self.echoes)

    @property
    def field_strength(self) -> float:
        return float(self.echoes[0].field_strength)


def inherited_metadata(image: Path, root: Path) -> dict:
    """The metadata of ``image`` under the inheritance principle (nearest JSON wins, key by key)."""
    parsed = _parse(image.name)
    if parsed is None:
        return {}
    ents, suffix, _ = parsed
    root = root.resolve()
    folders = []
    d = image.resolve().parent
    while True:
        folders.append(d)
        if d == root or d.parent == d:
            break
        d = d.parent
    meta: dict = {}
    for folder in reversed(folders):  # root first, the image's own folder last
        candidates = []
        for js in folder.glob("*.json"):
            p = _parse(js.name)
            if p is None or p[1] != suffix or js.name == "dataset_description.json":
                continue
            if all(ents.get(k) == v for k, v in p[0].items()):
                candidates.append((len(p[0]), js))
        for _, js in sorted(candidates):  # fewer entities (more general) first
            meta.update(read_json_object(js))
    return meta


def find_runs(root: str | Path, participant_labels=None, sessions=None) -> list[BidsRun]:
    """Every GRE/MEGRE run of a BIDS dataset, each with its echoes or the reason it cannot run.

    ``participant_labels`` / ``sessions``: labels to keep (with or without the ``sub-``/``ses-``
    prefix); a label that matches nothing is an error, as in BIDS apps.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"BIDS folder not found: {root}")
    if not (root / "dataset_description.json").is_file():
        raise InputError(f"{root} is not a BIDS dataset (no dataset_description.json)")
    want_sub = {str(p).removeprefix("sub-") for p in participant_labels} if participant_labels else None
    want_ses = {str(s).removeprefix("ses-") for s in sessions} if sessions else None
    subjects = sorted(d.name[4:] for d in root.glob("sub-*") if d.is_dir())
    if want_sub is not None:
        missing = sorted(want_sub - set(subjects))
        if missing:
            raise InputError(f"no such participant in {root}: {', '.join('sub-' + m for m in missing)}")
    groups: dict[tuple, tuple[BidsRun, list]] = {}
    found_sessions = set()
    for sub in subjects:
        if want_sub is not None and sub not in want_sub:
            continue
        for anat in sorted((root / f"sub-{sub}").glob("anat")) + sorted((root / f"sub-{sub}").glob("ses-*/anat")):
            ses = anat.parent.name[4:] if anat.parent.name.startswith("ses-") else None
            if ses is not None:
                found_sessions.add(ses)
            if want_ses is not None and ses not in want_ses:
                continue
            for f in sorted(anat.iterdir()):
                parsed = _parse(f.name)
                if parsed is None or parsed[2] == ".json" or parsed[1] not in SUFFIXES:
                    continue
                ents, suffix, _ = parsed
                if ents.get("sub") != sub or ents.get("ses") != ses:
                    continue
                key = (str(anat), suffix, tuple(sorted((k, v) for k, v in ents.items() if k not in ("part", "echo"))))
                run, files = groups.setdefault(
                    key, (BidsRun(sub, ses, {k: v for k, v in ents.items() if k not in ("part", "echo")}, suffix, anat), [])
                )
                files.append((ents.get("echo"), ents.get("part"), f))
    if want_ses is not None:
        missing = sorted(want_ses - found_sessions)
        if missing:
            raise InputError(f"no such session in {root}: {', '.join('ses-' + m for m in missing)}")
    runs = []
    for run, files in groups.values():
        _assemble(run, files, root)
        runs.append(run)
    return sorted(runs, key=lambda r: (r.name, r.suffix))


def _assemble(run: BidsRun, files: list, root: Path) -> None:
    by_echo: dict[str | None, dict[str, Path]] = {}
    for echo, part, path in files:
        if part is None:
            run.problem = f"{path.name} has no part- entity (magnitude and phase must be told apart)"
            return
        if part not in ("mag", "phase"):
            continue  # part-real / part-imag: not used
        by_echo.setdefault(echo, {})[part] = path
    for echo, parts in sorted(by_echo.items(), key=lambda kv: int(kv[0]) if kv[0] and kv[0].isdigit() else 0):
        for want in ("mag", "phase"):
            if want not in parts:
                where = f"echo-{echo} " if echo is not None else ""
                run.problem = f"{where}has no part-{want} image"
                return
        if echo is not None and not echo.isdigit():
            run.problem = f"echo-{echo} is not a number"
            return
        run.echoes.append(BidsEcho(int(echo) if echo is not None else None, parts["mag"], parts["phase"]))
    if not run.echoes:
        run.problem = "no magnitude / phase pair"
        return
    try:
        for e in run.echoes:
            metas = [inherited_metadata(e.phase, root), inherited_metadata(e.magnitude, root)]
            tes = [t for t in (echo_time_from_sidecar(m) for m in metas) if t is not None]
            b0s = [b for b in (field_strength_from_sidecar(m) for m in metas) if b is not None]
            if not tes:
                raise InputError(f"no EchoTime for {e.phase.name} in its sidecars")
            if not b0s:
                raise InputError(f"no MagneticFieldStrength for {e.phase.name} in its sidecars")
            if len(tes) == 2 and abs(tes[0] - tes[1]) > 1e-6:
                raise InputError(f"EchoTime differs between {e.phase.name} and {e.magnitude.name}")
            e.echo_time, e.field_strength = tes[0], b0s[0]
        tes = [e.echo_time for e in run.echoes]
        if len(set(round(t, 9) for t in tes)) != len(tes):
            raise InputError(f"echoes share an EchoTime ({tes})")
        if len({round(e.field_strength, 6) for e in run.echoes}) != 1:
            raise InputError("MagneticFieldStrength differs between echoes")
    except InputError as exc:
        run.problem = str(exc)
        return
    run.echoes.sort(key=lambda e: e.echo_time)


def participant_ages(root: str | Path) -> dict[tuple[str, str | None], float]:
    """Age in years per (subject, session): ``sessions.tsv`` ``age`` where given, else
    ``participants.tsv``. Units follow ``participants.json`` / the sessions JSON (``Units`` of
    ``age``: years by default, or months, weeks, days), as BIDS recommends."""
    root = Path(root)
    factor = {
        "years": 1.0,
        "year": 1.0,
        "y": 1.0,
        "months": 1 / 12,
        "month": 1 / 12,
        "weeks": 7 / 365.25,
        "week": 7 / 365.25,
        "days": 1 / 365.25,
        "day": 1 / 365.25,
        "d": 1 / 365.25,
    }

    def units(json_path: Path) -> float:
        try:
            meta = json.loads(json_path.read_text()) if json_path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            meta = {}
        u = str((meta.get("age") or {}).get("Units", "years")).strip().lower() if isinstance(meta.get("age"), dict) else "years"
        return factor.get(u, 1.0)

    def rows(tsv: Path):
        if not tsv.is_file():
            return []
        with open(tsv, newline="") as fh:
            return list(csv.DictReader(fh, delimiter="\t"))

    ages: dict[tuple[str, str | None], float] = {}
    f = units(root / "participants.json")
    for row in rows(root / "participants.tsv"):
        try:
            ages[(row["participant_id"].removeprefix("sub-"), None)] = float(row["age"]) * f
        except (KeyError, TypeError, ValueError):
            continue
    for tsv in root.glob("sub-*/sub-*_sessions.tsv"):
        sub = tsv.parent.name[4:]
        fs = units(tsv.with_suffix(".json"))
        for row in rows(tsv):
            try:
                ages[(sub, row["session_id"].removeprefix("ses-"))] = float(row["age"]) * fs
            except (KeyError, TypeError, ValueError):
                continue
    return ages


@dataclass
class DerivativeNames:
    """Where one run's derivatives go, relative to the derivatives root."""

    run: BidsRun

    @property
    def folder(self) -> Path:
        return Path(f"sub-{self.run.subject}") / (f"ses-{self.run.session}" if self.run.session else "") / "anat"

    @property
    def figures(self) -> Path:
        return Path(f"sub-{self.run.subject}") / "figures"

    def file(self, what: str) -> str:
        n = self.run.name
        return {
            "chimap": f"{n}_Chimap.nii.gz",
            "chimap_json": f"{n}_Chimap.json",  # the provenance; written last: its presence marks a complete run
            "mask": f"{n}_desc-brain_mask.nii.gz",
            "mask_json": f"{n}_desc-brain_mask.json",
            "dseg": f"{n}_desc-dgm_dseg.nii.gz",
            "qcmap": f"{n}_desc-consistency_qcmap.nii.gz",
            "figure": f"{n}_desc-quicklook.png",
        }[what]


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
