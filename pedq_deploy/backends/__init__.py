"""Inference backends behind one small interface. Heavy libraries load only inside their backend."""

from __future__ import annotations

from .base import Runner
from .manifest import ModelManifest, load_manifest

__all__ = ["Runner", "ModelManifest", "load_manifest", "make_runner", "resolve_auto", "BACKENDS"]


def make_runner(manifest: ModelManifest, backend: str = "auto", threads: int | None = None) -> Runner:
    """A runner for ``manifest``: ``onnxruntime``, ``openvino``, ``tensorrt`` (a serialized engine), or ``auto``.

    ``auto``: a TensorRT engine when the manifest names one and tensorrt is installed; else
    onnxruntime on a GPU (its CUDA provider); else OpenVINO where it is installed (the fastest CPU
    path, ``benchmarks/bench_inference.py``); else onnxruntime on the CPU.
    """
    from ..errors import InputError

    if backend == "auto":
        backend = resolve_auto(manifest)
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(manifest, threads=threads)
    if backend == "openvino":
        from .openvino import OpenVINORunner

        return OpenVINORunner(manifest, threads=threads)
    if backend == "tensorrt":
        from .tensorrt import TensorRTRunner

        return TensorRTRunner(manifest)
    raise InputError(f"unknown backend {backend!r} ({', '.join(BACKENDS)})")


BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")


def resolve_auto(manifest: ModelManifest) -> str:
    """The backend ``auto`` picks for ``manifest`` on this machine (see :func:`make_runner`)."""
    if manifest.engine_file is not None and _installed("tensorrt"):
        return "tensorrt"
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return "onnxruntime"
    return "openvino" if _installed("openvino") else "onnxruntime"


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a backend's library is heavy)."""
    import importlib.util

    return importlib.util.find_spec(module) is not None
