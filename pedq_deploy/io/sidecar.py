"""BIDS JSON sidecars: EchoTime (s) and MagneticFieldStrength (T)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import InputError

__all__ = ["sidecar_path", "read_sidecar", "read_json_object", "echo_time_from_sidecar", "field_strength_from_sidecar"]


def sidecar_path(image_path: str | Path) -> Path:
    """``sub-01_part-mag_T2starw.nii.gz`` -> ``sub-01_part-mag_T2starw.json``."""
    p = Path(image_path)
    name = p.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_suffix(".json")


def read_json_object(path: str | Path) -> dict:
    """A sidecar's JSON object, with its path under ``_path``; a one-line InputError otherwise."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot parse sidecar {path}: {exc}") from None
    if not isinstance(meta, dict):
        raise InputError(f"sidecar {path} is not a JSON object")
    meta["_path"] = str(path)
    return meta


def read_sidecar(image_path: str | Path) -> dict:
    """The JSON sidecar next to an image as a dict ({} when there is none)."""
    sc = sidecar_path(image_path)
    return read_json_object(sc) if sc.is_file() else {}


def _number(meta: dict, key: str) -> float | None:
    if key not in meta:
        return None
    v = meta[key]
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"{key} in {meta.get('_path', 'sidecar')} must be a number, got {v!r}")
    return float(v)


def echo_time_from_sidecar(meta: dict) -> float | None:
    """EchoTime in seconds; values above 1 are refused as milliseconds (a classic BIDS mistake)."""
    te = _number(meta, "EchoTime")
    if te is not None and te > 1.0:
        raise InputError(f"EchoTime {te} in {meta.get('_path', 'sidecar')} looks like milliseconds; BIDS wants seconds ({te / 1000:g})")
    return te


def field_strength_from_sidecar(meta: dict) -> float | None:
    """MagneticFieldStrength in tesla."""
    b0 = _number(meta, "MagneticFieldStrength")
    if b0 is not None and not 0.05 <= b0 <= 20:
        raise InputError(f"MagneticFieldStrength {b0} T in {meta.get('_path', 'sidecar')} is implausible")
    return b0
