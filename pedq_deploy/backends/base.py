"""The runner contract (after Polygraphy): activate() builds the session, infer() runs it."""

from __future__ import annotations

import numpy as np

from .manifest import ModelManifest

__all__ = ["Runner"]


class Runner:
    """``with runner: out = runner.infer({"input": x})``. Subclasses implement the ``*_impl`` methods."""

    name = "base"  # the backend's name, as --backend spells it

    def __init__(self, manifest: ModelManifest):
        self.manifest = manifest
        self.active = False

    def activate(self) -> None:
        if not self.active:
            self.activate_impl()
            self.active = True

    def deactivate(self) -> None:
        if self.active:
            self.deactivate_impl()
            self.active = False

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.active:
            raise RuntimeError(f"{type(self).__name__} used before activate()")
        return self.infer_impl(feed)

    def predictor(self):
        """A callable for the sliding window: (B, C, *patch) array -> first output."""
        name_in = self.manifest.inputs[0]["name"]
        name_out = self.manifest.outputs[0]["name"]
        return lambda batch: self.infer({name_in: np.ascontiguousarray(batch, np.float32)})[name_out]

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # subclasses
    def activate_impl(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def deactivate_impl(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError
