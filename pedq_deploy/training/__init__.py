"""PedQ-NET training (torch + MONAI, the ``train`` extra). Never imported by the runtime."""

from __future__ import annotations

__all__ = ["config", "networks", "losses", "data", "trainer"]
