"""OpenVINO backend: the shipped ONNX models compiled for the CPU by Intel's OpenVINO runtime.

Why: onnxruntime's CPU convolutions go through im2col + GEMM, which for 3D kernels on small channel
counts (the full-resolution decoder of UNETR and the U-Net) is bound by memory traffic; OpenVINO's
CPU plugin runs them as direct (oneDNN JIT) convolutions. Measured by ``benchmarks/bench_inference.py``.

The ONNX file is read as it is (no conversion step, same manifest and checksum). The model is
compiled once per batch size with static shapes (the sliding window always sends the same batch),
in fp32: OpenVINO otherwise runs in bf16 on CPUs that have it, which changes the numbers.
Imported only when chosen (``--backend openvino``, or ``auto`` where it is installed).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .base import Runner
from .manifest import ModelManifest

__all__ = ["OpenVINORunner", "openvino_available"]


def openvino_available() -> bool:
    from . import _installed

    return _installed("openvino")


def _ov():
    try:
        import openvino as ov
    except ImportError:
        raise InputError("the openvino backend needs the openvino package (pip install 'pedq-deploy[openvino]')") from None
    return ov


class OpenVINORunner(Runner):
    name = "openvino"

    def __init__(self, manifest: ModelManifest, threads: int | None = None, device: str = "CPU"):
        super().__init__(manifest)
        self.threads = threads
        self.device = device
        self._core = self._model = None
        self._compiled: dict[int, tuple] = {}  # batch size -> (compiled model, infer request)
        self._input = manifest.inputs[0]["name"]
        self._sample_shape = list(manifest.inputs[0]["shape"][1:])  # (channels, *patch)

    def activate_impl(self) -> None:
        ov = _ov()
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(self.manifest.file))
        except Exception as exc:  # OpenVINO raises its own RuntimeError subclasses for a bad file
            raise InputError(f"cannot load model {self.manifest.file}: {str(exc).strip().splitlines()[0]}") from None
        got = self._model.inputs[0]
        dims = [d.get_length() if d.is_static else None for d in got.get_partial_shape()]
        if got.get_any_name() != self._input or dims[1:] != self._sample_shape:
            raise InputError(
                f"model {self.manifest.file} takes {got.get_any_name()} {dims}, but its manifest says "
                f"{self._input} {self.manifest.inputs[0]['shape']}"
            )

    def deactivate_impl(self) -> None:
        self._compiled.clear()
        self._core = self._model = None

    def _request(self, batch: int):
        if batch not in self._compiled:
            from ..physics import fft_workers  # $PEDQ_THREADS, else every core of this process

            model = self._model.clone()
            model.reshape({self._input: [batch, *self._sample_shape]})
            config = {
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "f32",
                "INFERENCE_NUM_THREADS": int(self.threads or fft_workers()),
            }
            compiled = self._core.compile_model(model, self.device, config)
            self._compiled[batch] = (compiled, compiled.create_infer_request())
        return self._compiled[batch]

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if set(feed) != {self._input}:
            raise InputError(f"model {self.manifest.file} takes one input {self._input!r}, got {sorted(feed)}")
        x = np.ascontiguousarray(feed[self._input], np.float32)
        if x.ndim != 5 or list(x.shape[1:]) != self._sample_shape:
            raise InputError(f"model {self.manifest.file} takes (batch, {', '.join(map(str, self._sample_shape))}), got {x.shape}")
        compiled, request = self._request(int(x.shape[0]))
        results = request.infer({0: x})
        # copies: the request's buffers are reused by the next call
        return {out.get_any_name(): np.array(results[out]) for out in compiled.outputs}
