"""Model export (torch side, the train extra): PyTorch -> ONNX (+ manifest) -> TensorRT engine."""

from __future__ import annotations

from .onnx import export_checkpoint, export_network

__all__ = ["export_checkpoint", "export_network"]
