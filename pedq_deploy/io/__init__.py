"""The only code that touches files: NIfTI images, JSON sidecars, output folders."""

from __future__ import annotations

from .checksum import sha256_file
from .nifti import ImageProps, load_image, save_image
from .outputs import StagedOutput
from .sidecar import read_sidecar

__all__ = ["sha256_file", "ImageProps", "load_image", "save_image", "StagedOutput", "read_sidecar"]
