"""The pipeline, arrays in -> arrays out, and its file-level door."""

from __future__ import annotations

from ..config import PipelineConfig
from .pipeline import PipelineResult, run_case, run_case_files

__all__ = ["PipelineConfig", "PipelineResult", "run_case", "run_case_files"]
