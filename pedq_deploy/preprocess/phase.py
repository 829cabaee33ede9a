"""Phase formats met in practice, detected and rescaled to radians."""
from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["detect_and_scale_phase"]

_TOL = 1e-3


def detect_and_scale_phase(phase: np.ndarray) -> tuple[np.ndarray, str]:
    """Return the phase in radians and a sentence saying which format was assumed.

    Recognised: radians in [-pi, pi]; Siemens signed integers -4096..4095 (x pi/4096);
    Siemens unsigned integers 0..4095 (stored values before RescaleSlope/Intercept; mapped
    to [-pi, pi)).

    Raises
    ------
    InputError
        Non-finite values, or a range that matches no known format.
    """
    p = np.asarray(phase, dtype=np.float32)
    if not np.all(np.isfinite(p)):
        raise InputError("phase image contains NaN or infinite values")
    lo, hi = float(p.min()), float(p.max())
    if lo >= -np.pi - _TOL and hi <= np.pi + _TOL:
        return p, f"phase range [{lo:.3g}, {hi:.3g}]: assumed radians"
    integer = bool(np.all(np.abs(p - np.round(p)) < 1e-3))
    if integer and lo >= 0 and hi <= 4095:
        return ((p - 2048.0) * np.float32(np.pi / 2048.0)).astype(np.float32), (
            f"phase range [{lo:g}, {hi:g}] in integers: assumed Siemens stored values 0..4095, rescaled to radians"
        )
    if integer and lo >= -4096 and hi <= 4096:
        return (p * np.float32(np.pi / 4096.0)).astype(np.float32), (
            f"phase range [{lo:g}, {hi:g}] in integers: assumed Siemens -4096..4095, rescaled by pi/4096"
        )
    raise InputError(
        f"phase range [{lo:.4g}, {hi:.4g}] matches no known format (radians, -4096..4095 or 0..4095)"
    )
