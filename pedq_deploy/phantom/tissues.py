"""Tissue properties of the simulated neonate (term, ~0-1 month) and infant (~1 year) head at 3 T.

Susceptibility (ppm, SI, relative to water/CSF) follows the developmental picture of the QSM
literature: at birth the deep grey matter holds almost no non-haem iron, so its contrast to
the surroundings is a few ppb; iron accumulates first in the globus pallidus, then putamen
and caudate, over the first years, while white matter turns diamagnetic as it myelinates
(slightly paramagnetic relative to CSF at birth, negative by one to two years).
Values below are chosen inside the ranges these sources report; they are a phantom's
plausible values, not a normative atlas:

* B. Hallgren, P. Sourander, "The effect of age on the non-haemin iron in the human brain",
  J. Neurochem. 3:41-51, 1958 (iron near zero at birth, rising fastest in the pallidum).
* W. Li et al., "Differential developmental trajectories of magnetic susceptibility in human
  brain gray and white matter over the lifespan", Hum. Brain Mapp. 35:2698-2713, 2014.
* Y. Zhang et al., "Longitudinal atlas for normative human brain development and aging over the
  lifespan using quantitative susceptibility mapping", NeuroImage 171:176-189, 2018.
* Y. Zhang et al., "Neonate and infant brain development from birth to 2 years assessed using
  MRI-based quantitative susceptibility mapping", NeuroImage 185:349-360, 2019.
* Venous blood: chi = Hct (1 - Y) dchi_do with dchi_do = 3.39 ppm (SI); Hct ~0.5 in neonates
  (Y. Jain et al., J. Cereb. Blood Flow Metab., 2010, for the model).
* Air 9.4 ppm above water; cortical bone about -2 ppm (less mineralised in neonates).

Magnitude: proton density (relative to CSF) and T2* (ms) at 3 T; neonatal white matter is
unmyelinated, wet and long-T2*, so it is brighter than grey matter, the reverse of adults.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tissue", "TISSUES", "AGES", "CHI_AIR", "FAT_SHIFT_PPM", "scaled_tissues"]

AGES = ("neonate", "infant")
CHI_AIR = 9.4  # ppm above water
FAT_SHIFT_PPM = -3.4  # main methylene peak relative to water


@dataclass(frozen=True)
class Tissue:
    chi: float  # ppm relative to water
    pd: float  # proton density relative to CSF
    t2s_ms: float


# (neonate, infant) per tissue
TISSUES: dict[str, tuple[Tissue, Tissue]] = {
    "air": (Tissue(CHI_AIR, 0.0, 1.0), Tissue(CHI_AIR, 0.0, 1.0)),
    "skin": (Tissue(0.0, 0.70, 30.0), Tissue(0.0, 0.70, 30.0)),
    "fat": (Tissue(0.6, 0.95, 40.0), Tissue(0.6, 0.95, 40.0)),
    "muscle": (Tissue(0.0, 0.65, 28.0), Tissue(0.0, 0.65, 28.0)),
    "bone": (Tissue(-1.2, 0.10, 1.2), Tissue(-1.9, 0.07, 1.0)),
    "dura": (Tissue(0.0, 0.60, 25.0), Tissue(0.0, 0.60, 25.0)),
    "csf": (Tissue(0.0, 1.00, 300.0), Tissue(0.0, 1.00, 300.0)),
    "gm": (Tissue(0.004, 0.86, 75.0), Tissue(0.010, 0.82, 55.0)),
    "wm": (Tissue(0.010, 0.92, 100.0), Tissue(-0.015, 0.78, 60.0)),
    "caudate": (Tissue(0.008, 0.85, 68.0), Tissue(0.025, 0.80, 50.0)),
    "putamen": (Tissue(0.006, 0.85, 68.0), Tissue(0.022, 0.80, 46.0)),
    "pallidum": (Tissue(0.018, 0.84, 60.0), Tissue(0.055, 0.78, 36.0)),
    "thalamus": (Tissue(0.004, 0.85, 66.0), Tissue(0.012, 0.80, 50.0)),
    "vein": (Tissue(0.45, 0.75, 14.0), Tissue(0.40, 0.75, 15.0)),
}


def scaled_tissues(factors: dict[str, tuple[float, float]] | None) -> dict[str, tuple[Tissue, Tissue]]:
    """The table with each named tissue's proton density and T2* multiplied by ``factors[name]``
    ((pd factor, T2* factor); susceptibility unchanged): a magnitude contrast drawn at random, as
    domain randomisation draws intensities per tissue class. None: the table itself."""
    if not factors:
        return TISSUES
    out = dict(TISSUES)
    for name, (f_pd, f_t2s) in factors.items():
        out[name] = tuple(Tissue(t.chi, t.pd * f_pd, t.t2s_ms * f_t2s) for t in TISSUES[name])
    return out
