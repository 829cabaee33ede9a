"""Inference backends behind one small interface. Heavy libraries load only inside their backend."""
from __future__ import annotations

from .base import Runner
from .manifest import ModelManifest, load_manifest

__all__ = ["Runner", "ModelManifest", "load_manifest", "make_runner"]


def make_runner(manifest: ModelManifest, backend: str = "auto", threads: int | None = None) -> Runner:
    """A runner for ``manifest``: ``onnxruntime``, ``tensorrt`` (a serialized engine), or ``auto``."""
    from ..errors import InputError

    if backend == "auto":
        backend = "tensorrt" if manifest.engine_file is not None and _tensorrt_available() else "onnxruntime"
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(manifest, threads=threads)
    if backend == "tensorrt":
        from .tensorrt import TensorRTRunner

        return TensorRTRunner(manifest)
    raise InputError(f"unknown backend {backend!r} (auto, onnxruntime, tensorrt)")


def _tensorrt_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None
