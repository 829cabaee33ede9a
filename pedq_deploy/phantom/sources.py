"""Where simulated heads come from, and the protocols and seed ranges they are drawn under.

A *source* is a way of making heads: each source's anatomy differs from the others', so a network
trained on one and judged on another shows how far it generalises. Every source draws from the
same seed ranges, and each range has one use: training draws from ``train``, models and settings
are chosen on ``validation``, and the numbers reported in ``benchmarks/RESULTS.md`` come from
``held_out``, which nothing is tuned on.
"""

from __future__ import annotations

import functools

from ..errors import InputError
from .simulate import Subject, make_subject

__all__ = ["SOURCES", "TRAINED_ON", "PROTOCOLS", "PROTOCOL_NAMES", "SEEDS", "make_head"]

SOURCES = {
    "procedural": make_subject,
    "icbm": functools.partial(make_subject, anatomy="icbm"),
    "cvs": functools.partial(make_subject, anatomy="cvs"),
}
# what each source is for: the networks train on TRAINED_ON, "cvs" is judged on only
TRAINED_ON = ("procedural", "icbm")
# the acquisitions the benchmarks report: the source study's protocol, a longer echo as infants are
# often scanned, and 1 mm isotropic voxels
PROTOCOLS = {
    "source": dict(shape=(256, 256, 80), voxel_size=(0.78, 0.78, 2.0), echo_time=4.92e-3),
    "te20": dict(shape=(256, 256, 80), voxel_size=(0.78, 0.78, 2.0), echo_time=20e-3),
    "iso1": dict(shape=(192, 192, 160), voxel_size=(1.0, 1.0, 1.0), echo_time=25e-3),
}
PROTOCOL_NAMES = {"source": "0.78x0.78x2 mm, TE 4.92 ms", "te20": "0.78x0.78x2 mm, TE 20 ms", "iso1": "1 mm isotropic, TE 25 ms"}
SEEDS = {"train": range(0, 1000), "held_out": range(1000, 2000), "validation": range(2000, 3000)}


def make_head(source: str, seed: int, age: str, protocol: str = "source", **kwargs) -> Subject:
    """Head ``seed`` of ``source`` at ``age``, scanned with ``protocol`` (keywords go to the source's maker)."""
    if source not in SOURCES:
        raise InputError(f"unknown head source {source!r} ({', '.join(SOURCES)})")
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r} ({', '.join(PROTOCOLS)})")
    return SOURCES[source](seed=seed, age=age, **{**PROTOCOLS[protocol], **kwargs})
