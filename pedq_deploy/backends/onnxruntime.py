"""onnxruntime backend: CPU, and the CUDA / TensorRT execution providers when installed."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .base import Runner
from .manifest import ModelManifest

__all__ = ["OnnxRuntimeRunner"]


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, manifest: ModelManifest, threads: int | None = None, providers: list[str] | None = None):
        super().__init__(manifest)
        self.threads = threads
        self.providers = providers
        self.session = None

    def activate_impl(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        from ..physics import fft_workers  # $PEDQ_THREADS, else every core of this process

        opts.intra_op_num_threads = self.threads or fft_workers()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        providers = self.providers or [
            p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider") if p in available
        ]
        try:
            self.session = ort.InferenceSession(str(self.manifest.file), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise InputError(f"cannot load model {self.manifest.file}: {str(exc).splitlines()[0]}") from None
        declared = self.manifest.inputs[0]
        got = self.session.get_inputs()[0]
        if got.name != declared["name"] or [d for d in got.shape[1:]] != list(declared["shape"][1:]):
            raise InputError(
                f"model {self.manifest.file} takes {got.name} {got.shape}, but its manifest says {declared['name']} {declared['shape']}"
            )

    def deactivate_impl(self) -> None:
        self.session = None

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        outs = self.session.run(names, {k: np.ascontiguousarray(v, np.float32) for k, v in feed.items()})
        return dict(zip(names, outs))
