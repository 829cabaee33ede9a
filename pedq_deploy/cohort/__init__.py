"""Cohorts: a BIDS study as independent runs on Dask, resumable, with a study report."""

from __future__ import annotations

from .report import write_report
from .study import plan_workers, process_run, run_hash, run_study

__all__ = ["run_study", "process_run", "run_hash", "plan_workers", "write_report"]
