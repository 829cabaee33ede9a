"""Phase formats met in practice, detected and rescaled to radians."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["detect_and_scale_phase", "check_not_swapped"]

_TOL = 1e-3


def _looks_like_magnitude(p: np.ndarray) -> bool:
    """Non-negative values piled up near zero (the air around a head), as a magnitude's are; a
    wrapped phase spreads over its whole range, about evenly, even in the air."""
    hi = float(p.max())
    return hi > 0 and float(np.mean(p < 0.05 * hi)) > 0.3


def check_not_swapped(magnitude: np.ndarray, phase: np.ndarray) -> None:
    """Refuse a magnitude and phase that look given the wrong way round.

    A magnitude is never negative. A phase in radians spans [-pi, pi), so a phase with no
    negative value is not one; a phase of integers 0..4095 (Siemens stored values) is
    recognised, but not when its values pile up near zero as a magnitude's do.
    """
    m = np.asarray(magnitude)
    p = np.asarray(phase)
    swapped = "are magnitude and phase given in the wrong order?"
    lo = float(m.min()) if m.size else 0.0
    if lo < 0:
        raise InputError(f"the magnitude has negative values (down to {lo:.4g}), as a phase image has: {swapped}")
    if not p.size or not np.all(np.isfinite(p)):
        return
    plo, phi = float(p.min()), float(p.max())
    integer = bool(np.all(np.abs(p - np.round(p)) < 1e-3))
    if plo >= 0 and phi > 0 and (not integer or _looks_like_magnitude(p)):
        raise InputError(f"the phase has no negative values (range [{plo:.4g}, {phi:.4g}]) and looks like a magnitude image: {swapped}")


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
    raise InputError(f"phase range [{lo:.4g}, {hi:.4g}] matches no known format (radians, -4096..4095 or 0..4095)")
