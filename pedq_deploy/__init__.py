"""pedq-deploy: pediatric quantitative susceptibility mapping at the scanner.

Data flow, one way: ``io`` -> ``preprocess`` -> ``inversion`` / networks -> ``io``.
Importing the package is cheap: submodules load when first used.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"
__all__ = ["__version__", "errors", "io", "metrics", "phantom", "physics", "inversion", "preprocess", "runtime"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
