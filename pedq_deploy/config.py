"""The pipeline's parameters, each defined once with its default and what it does.

``pedq-run``, ``pedq-study``, ``pedq-serve`` and the array-level pipeline all read their defaults
from :class:`PipelineConfig`. A run's algorithmic settings can be given as a TOML or JSON file
(``pedq-run --config FILE``); ``pedq-run --print-config`` writes this module's defaults as such a
file, one comment per field. The acquisition (echo times, field strength, B0 direction) belongs to
the scan, not to the file.

This module imports nothing heavy (no Numba, no SciPy): the command-line tools read it to show
their help.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import InputError

__all__ = [
    "PipelineConfig",
    "INVERSIONS",
    "MASKERS",
    "UNWRAPPERS",
    "MASK_THRESHOLD",
    "MASK_CLOSING_MM",
    "ACQUISITION_FIELDS",
    "parameter_names",
    "read_config_file",
    "default_config_text",
    "resolve_inversion",
    "resolve_refine",
]

INVERSIONS = ("auto", "pedq", "tkd", "tv")
MASKERS = ("auto", "classic", "network")
SEGMENTERS = ("network", "atlas")
UNWRAPPERS = ("laplacian", "lsq", "quality")
BACKGROUNDS = ("vsharp", "lbv")  # preprocess.UNWRAP_METHODS (not imported: that module loads Numba)
# the masking network's brain probability above which a voxel is brain, chosen on validation heads
MASK_THRESHOLD = 0.7
MASK_CLOSING_MM = 0.0
ACQUISITION_FIELDS = ("echo_time", "field_strength", "b0_direction")


def _param(default, doc: str, choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"doc": doc, "choices": choices})


@dataclass
class PipelineConfig:
    """Parameters of one run. Times in seconds, field strength in tesla, lengths in mm.

    The first three fields describe the acquisition; the rest are the algorithm's settings, whose
    defaults are the pipeline that ``pedq-run`` runs.
    """

    echo_time: float | tuple[float, ...]  # seconds; one per echo for a multi-echo scan
    field_strength: float
    b0_direction: tuple[float, float, float] | None = None  # voxel frame; None: from the affine
    inversion: str = _param(
        "auto",
        "dipole inversion: auto (pedq when the PedQ-NET models are found, else tkd), pedq (the "
        "reconstruction network), tkd (truncated k-space division), tv (total variation, ADMM)",
        INVERSIONS,
    )
    masker: str = _param(
        "auto",
        "brain mask: auto (the masking network when its model is found, else classic), network, "
        "classic (threshold, morphology, largest component)",
        MASKERS,
    )
    segmenter: str = _param(
        "network",
        "deep grey matter labels: network (the segmentation network, on PedQ-NET's map), atlas "
        "(the Harvard-Oxford nuclei on the ICBM152 brain, registered affinely to the brain mask; "
        "needs the anatomy extra)",
        SEGMENTERS,
    )
    mask_threshold: float = _param(MASK_THRESHOLD, "the masking network's brain probability above which a voxel is brain")
    mask_closing: float = _param(
        MASK_CLOSING_MM,
        "the masking network's mask is closed by a ball of this radius in mm (fills the notches in its surface, "
        "each of which background removal would widen by its sphere); 0: not closed",
    )
    unwrap: str = _param(
        "lsq",
        "phase unwrapping: lsq (least squares on the wrapped neighbour differences), laplacian "
        "(Schofield & Zhu 2003; errs at long echo times), quality (quality-guided path following)",
        UNWRAPPERS,
    )
    background: str = _param(
        "vsharp",
        "background field removal: vsharp (Wu et al. 2012; the brain loses its smallest sphere's radius at the edge) "
        "or lbv (Laplacian boundary value, Zhou et al. 2014; the brain loses one voxel at the edge)",
        BACKGROUNDS,
    )
    vsharp_radii: tuple[float, ...] | None = _param(
        None, "V-SHARP sphere radii in mm, largest first; none: 12 mm down to twice the thickest voxel side"
    )
    vsharp_threshold: float = _param(0.05, "V-SHARP's deconvolution threshold (truncated SVD of the SMV kernel)")
    fill_rim: bool = _param(
        True,
        "TV and the refinement solve chi over the whole brain mask, the field's data taken only where background "
        "removal kept it: the rim it eroded gets the susceptibility whose fields best explain the field inside "
        "(chosen on validation heads); false: chi only where background removal left the field",
    )
    tkd_threshold: float = _param(0.19, "TKD: the dipole kernel's magnitude below which it is truncated")
    tv_lambda: float = _param(3e-4, "TV: the weight of the total variation term")
    tv_iterations: int = _param(60, "TV and the refinement: ADMM iterations")
    refine: bool | str = _param(
        "auto",
        "refine PedQ-NET's map by TV on the local field with the map as a prior, TV lifted across "
        "the boundaries of the segmented deep grey matter (needs a segmentation model or labels): "
        "sharper deep grey matter, more of the true contrast. auto: on wherever the inversion is "
        "PedQ-NET and the boundaries are at hand (chosen on validation heads); true or false",
    )
    refine_weight: float = _param(0.003, "refinement: the prior's weight, in squared dipole-kernel units")
    refine_lambda: float = _param(3e-4, "refinement: its TV weight away from the structures' boundaries")
    refine_edge_weight: float = _param(
        0.0, "refinement: TV's weight is multiplied by this across the deep grey matter's boundaries (1: no guidance)"
    )
    refine_edge_band: int = _param(3, "refinement: how far from a boundary, in voxels, TV is lowered")

    @property
    def echo_times(self) -> tuple[float, ...]:
        return tuple(float(t) for t in (self.echo_time if isinstance(self.echo_time, (tuple, list)) else (self.echo_time,)))

    def validate(self) -> None:
        """Raise :class:`InputError` with one line for the first setting that cannot be run."""
        if not self.echo_times:
            raise InputError("no echo time given")
        for te in self.echo_times:
            if not math.isfinite(te) or te <= 0:
                raise InputError(f"echo time must be positive (seconds), got {te}")
            if te > 1.0:
                raise InputError(f"echo time {te:g} s is implausible: give it in seconds (if {te:g} is in ms, that is {te / 1000:g} s)")
        if not math.isfinite(self.field_strength) or self.field_strength <= 0:
            raise InputError(f"field strength must be positive (tesla), got {self.field_strength}")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise InputError(f"unknown {f.name} {getattr(self, f.name)!r} ({', '.join(choices)})")
        if not 0.0 < self.mask_threshold < 1.0:
            raise InputError(f"the mask threshold must lie between 0 and 1, got {self.mask_threshold}")
        mc = self.mask_closing
        if isinstance(mc, bool) or not isinstance(mc, (int, float)) or not math.isfinite(mc) or mc < 0:
            raise InputError(f"mask_closing must be a number of mm >= 0, got {mc!r}")
        if self.vsharp_radii is not None and not (len(self.vsharp_radii) and all(_positive(r) for r in self.vsharp_radii)):
            raise InputError(f"vsharp_radii must be positive numbers (mm), got {self.vsharp_radii!r}")
        for name in ("vsharp_threshold", "tkd_threshold", "tv_lambda", "refine_weight", "refine_lambda"):
            if not _positive(getattr(self, name)):
                raise InputError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        for name in ("tv_iterations", "refine_edge_band"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a whole number >= 1, got {v!r}")
        if not (isinstance(self.refine_edge_weight, (int, float)) and 0 <= self.refine_edge_weight <= 1):
            raise InputError(f"refine_edge_weight must lie in [0, 1], got {self.refine_edge_weight!r}")
        if not isinstance(self.fill_rim, bool):
            raise InputError(f"fill_rim must be true or false, got {self.fill_rim!r}")
        if not (isinstance(self.refine, bool) or self.refine == "auto"):
            raise InputError(f"refine must be auto, true or false, got {self.refine!r}")
        if self.refine is True and self.inversion not in ("pedq", "auto"):
            raise InputError(f"the refinement refines PedQ-NET's map: it needs inversion pedq (got {self.inversion})")

    def parameters(self) -> dict:
        """The algorithm's settings (no acquisition), JSON-ready."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k not in ACQUISITION_FIELDS}


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def parameter_names() -> tuple[str, ...]:
    """The settings a config file may hold."""
    return tuple(f.name for f in fields(PipelineConfig) if f.name not in ACQUISITION_FIELDS)


def _coerce(name: str, value):
    """A value read from TOML / JSON in the type the dataclass holds (lists become tuples, ints floats)."""
    default = next(f.default for f in fields(PipelineConfig) if f.name == name)
    if isinstance(value, list):
        return tuple(value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def read_config_file(path: str | Path) -> dict:
    """The settings in a TOML (``.toml``) or JSON file, checked against :func:`parameter_names`.

    A TOML file may keep them at its top level or under a ``[pipeline]`` table (as
    ``--print-config`` writes them). Unknown keys, and acquisition keys, are refused.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file not found: {p}")
    text = p.read_text(errors="replace")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"config {p} is not valid JSON: {exc}") from None
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"config {p} is not valid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"config {p} must hold a table of settings")
    if set(data) == {"pipeline"} and isinstance(data["pipeline"], dict):
        data = data["pipeline"]
    known = parameter_names()
    acquisition = sorted(set(data) & set(ACQUISITION_FIELDS))
    if acquisition:
        raise InputError(f"config {p}: {', '.join(acquisition)} belong to the scan: give them as options or in the BIDS sidecars")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InputError(f"config {p}: unknown settings {', '.join(unknown)} (known: {', '.join(known)})")
    out = {k: _coerce(k, v) for k, v in data.items()}
    PipelineConfig(echo_time=0.01, field_strength=3.0, **out).validate()  # one line for the first bad value
    return out


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def default_config_text() -> str:
    """The defaults as a TOML file, a comment above each setting (what ``--print-config`` writes)."""
    import textwrap

    lines = [
        "# pedq-deploy pipeline settings: pass this file to pedq-run / pedq-study / pedq-serve with --config.",
        "# Every setting left out keeps its default. Echo times, field strength and B0 come from the scan.",
        "",
        "[pipeline]",
    ]
    for f in fields(PipelineConfig):
        if f.name in ACQUISITION_FIELDS:
            continue
        lines.extend("# " + line for line in textwrap.wrap(f.metadata["doc"], 96))
        if f.default is None:
            lines.append(f"# {f.name} = ...")
        else:
            lines.append(f"{f.name} = {_toml_value(f.default)}")
        lines.append("")
    return "\n".join(lines)


def resolve_inversion(inversion: str, models) -> str:
    """``auto``: the reconstruction network when its model is loaded, else TKD."""
    if inversion != "auto":
        return inversion
    return "pedq" if models is not None and models.has("recon") else "tkd"


def resolve_refine(refine: bool | str, inversion: str, guided: bool) -> bool:
    """``auto``: refine wherever the inversion (resolved) is PedQ-NET and the refinement has what it
    needs (``guided``: deep grey matter boundaries from a segmentation model or given labels, or no
    guidance asked for). On validation heads of both training sources this gave PedQ-NET's map
    about twice its contrast and a deep grey matter error about half as large
    (benchmarks/bench_choose.py)."""
    if refine == "auto":
        return inversion == "pedq" and guided
    return bool(refine)
