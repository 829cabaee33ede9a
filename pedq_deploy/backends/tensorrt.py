"""Native TensorRT engines (TensorRT 10 / 11 Python API with cuda-python buffers).

Imported only when the tensorrt backend is chosen. Never run in this project's CI, which has no
GPU: its tests skip where ``tensorrt`` is absent.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..io.checksum import sha256_file
from .base import Runner
from .manifest import ModelManifest

__all__ = ["TensorRTRunner", "build_engine"]


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise InputError("the tensorrt backend needs the tensorrt package and a CUDA GPU (pip install 'pedq-deploy[trt]')") from None
    return trt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise InputError("the tensorrt backend needs cuda-python for device buffers (pip install cuda-python)") from None
    return cudart


def _check(result):
    err = result[0]
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return result[1] if len(result) > 1 else None


def build_engine(
    onnx_path: str, engine_path: str, patch, in_channels: int, *, fp16: bool = False, max_batch: int = 4, timing_cache: str | None = None
) -> dict:
    """Build a serialized engine with an optimisation profile over the batch axis.

    TensorRT 10: FP16 through the builder flag. TensorRT 11 dropped that flag (strongly typed
    networks): the ONNX model must then carry fp16 weights and casts itself, so ``fp16`` is refused
    for an fp32 model there.
    """
    trt = _trt()
    major = int(trt.__version__.split(".")[0])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if major >= 11:  # TensorRT 11: precision comes from the model's own types
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as fh:
        if not parser.parse(fh.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise InputError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16:
        if major >= 11:
            raise InputError("TensorRT 11 builds strongly typed networks: export the model in fp16 instead of --fp16")
        config.set_flag(trt.BuilderFlag.FP16)
    cache = None
    if timing_cache:
        try:
            with open(timing_cache, "rb") as fh:
                cache = config.create_timing_cache(fh.read())
        except FileNotFoundError:
            cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    shape = lambda b: (b, in_channels, *patch)  # noqa: E731
    profile.set_shape(name, shape(1), shape(max(1, max_batch // 2)), shape(max_batch))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InputError(f"TensorRT failed to build an engine from {onnx_path}")
    with open(engine_path, "wb") as fh:
        fh.write(serialized)
    if timing_cache and cache is not None:
        with open(timing_cache, "wb") as fh:
            fh.write(memoryview(cache.serialize()))
    return {"tensorrt_version": trt.__version__, "fp16": fp16, "max_batch": max_batch, "sha256": sha256_file(engine_path)}


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(self, manifest: ModelManifest):
        super().__init__(manifest)
        if manifest.engine_file is None:
            raise InputError(f"{manifest.path} names no TensorRT engine: build one with pedq-export --format tensorrt")

    def activate_impl(self) -> None:
        trt = _trt()
        self._cudart = _cudart()
        engine_sha = self.manifest.raw.get("tensorrt_engine_sha256")
        if engine_sha and sha256_file(self.manifest.engine_file) != engine_sha:
            raise InputError(f"engine {self.manifest.engine_file} does not match the sha256 in {self.manifest.path}")
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(self.manifest.engine_file, "rb") as fh:
            self._engine = self._runtime.deserialize_cuda_engine(fh.read())
        if self._engine is None:
            raise InputError(f"cannot deserialize TensorRT engine {self.manifest.engine_file} (built for another GPU or version?)")
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate())

    def deactivate_impl(self) -> None:
        if getattr(self, "_stream", None) is not None:
            self._cudart.cudaStreamDestroy(self._stream)
        self._context = self._engine = self._runtime = self._stream = None

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        kind = cudart.cudaMemcpyKind
        buffers, outputs = [], {}
        try:
            for name, arr in feed.items():
                a = np.ascontiguousarray(arr, np.float32)
                self._context.set_input_shape(name, a.shape)
                ptr = _check(cudart.cudaMalloc(a.nbytes))
                buffers.append(ptr)
                _check(cudart.cudaMemcpyAsync(ptr, a.ctypes.data, a.nbytes, kind.cudaMemcpyHostToDevice, self._stream))
                self._context.set_tensor_address(name, ptr)
            for out in self.manifest.outputs:
                shape = tuple(self._context.get_tensor_shape(out["name"]))
                host = np.empty(shape, np.float32)
                ptr = _check(cudart.cudaMalloc(host.nbytes))
                buffers.append(ptr)
                self._context.set_tensor_address(out["name"], ptr)
                outputs[out["name"]] = (host, ptr)
            if not self._context.execute_async_v3(self._stream):
                raise RuntimeError("TensorRT execution failed")
            for host, ptr in outputs.values():
                _check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind.cudaMemcpyDeviceToHost, self._stream))
            _check(cudart.cudaStreamSynchronize(self._stream))
        finally:
            for ptr in buffers:
                cudart.cudaFree(ptr)
        return {name: host for name, (host, _) in outputs.items()}
