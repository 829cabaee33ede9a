"""DICOM in (a GRE series: magnitude and phase) and DICOM out (QSM as MR images, a Parametric
Map, the segmentation as DICOM SEG). Needs the ``dicom`` extra (pydicom; highdicom for the
Parametric Map and SEG).

Geometry follows the NIfTI convention of dcm2niix: voxel axes (column, row, slice), the affine
maps them to RAS millimetres (DICOM's LPS with x and y flipped), slices sorted along the normal
of ImageOrientationPatient. Pixel values are rescaled (RescaleSlope / RescaleIntercept), so
Siemens phase stored 0..4095 with slope 2 and intercept -4096 arrives as -4096..4094, which the
phase-format detection maps to radians.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .nifti import ImageProps
from .orientation import lps_to_ras, ras_to_lps, slice_spacing

__all__ = ["is_dicom_dir", "DicomSeries", "read_dicom_folder", "write_mr_series", "write_parametric_map", "write_seg", "dicom_dir_sha256"]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:
        raise InputError(f"DICOM input/output needs the dicom extra (pip install 'pedq-deploy[dicom]'): {exc}") from None
    return pydicom


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def is_dicom_dir(path) -> bool:
    """A folder holding at least one file with the DICOM preamble."""
    p = Path(path)
    if not p.is_dir():
        return False
    for f in _files(p)[:50]:
        try:
            with open(f, "rb") as fh:
                if fh.read(132)[128:132] == b"DICM":
                    return True
        except OSError:
            continue
    return False


def dicom_dir_sha256(folder) -> str:
    """One checksum for a folder of files (names and contents, in sorted order)."""
    h = hashlib.sha256()
    root = Path(folder)
    for f in _files(root):
        h.update(str(f.relative_to(root)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class DicomSeries:
    data: np.ndarray  # (columns, rows, slices) float32, rescaled
    props: ImageProps
    kind: str  # "M" magnitude, "P" phase
    echo_time: float | None  # seconds
    field_strength: float | None  # tesla
    datasets: list = field(default_factory=list)  # headers (no pixel data), in slice order


def _kind(ds) -> str | None:
    it = [str(x).upper() for x in getattr(ds, "ImageType", [])]
    if "P" in it or "PHASE" in it:
        return "P"
    if "M" in it or "MAGNITUDE" in it:
        return "M"
    return None


def _float(ds, name):
    v = getattr(ds, name, None)
    try:
        return float(v) if v is not None and str(v) != "" else None
    except (TypeError, ValueError):
        return None


def read_dicom_folder(folder, *, want: str | None = None) -> dict[str, DicomSeries]:
    """The magnitude ("M") and/or phase ("P") series of the first echo in ``folder``."""
    pydicom = _pydicom()
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"DICOM folder not found: {root}")
    groups: dict[tuple, list] = {}
    for f in _files(root):
        try:
            ds = pydicom.dcmread(f, force=False)
        except Exception:  # not DICOM: pydicom raises several types (InvalidDicomError, EOFError, ...)
            continue
        if "PixelData" not in ds or "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            continue
        kind = _kind(ds)
        if kind is None or (want is not None and kind != want):
            continue
        echo = int(getattr(ds, "EchoNumbers", 1) or 1)
        groups.setdefault((kind, str(getattr(ds, "SeriesInstanceUID", "")), echo), []).append(ds)
    out = {}
    for kind in ("M", "P"):
        keys = sorted(k for k in groups if k[0] == kind)
        if not keys:
            continue
        first_echo = min(k[2] for k in keys)
        series = [k for k in keys if k[2] == first_echo]
        if len(series) > 1:
            raise InputError(f"{root}: several {'magnitude' if kind == 'M' else 'phase'} series; give one folder per series")
        out[kind] = _assemble(groups[series[0]], kind, root)
    if want is not None and want not in out:
        raise InputError(f"{root}: no {'magnitude (ImageType M)' if want == 'M' else 'phase (ImageType P)'} DICOM images found")
    if not out:
        raise InputError(f"{root}: no DICOM magnitude or phase images found")
    return out


def _assemble(dsets: list, kind: str, root: Path) -> DicomSeries:
    iop = np.array([float(x) for x in dsets[0].ImageOrientationPatient], np.float64)
    row, col = iop[:3], iop[3:]
    if not np.all(np.isfinite(iop)) or abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3:
        raise InputError(f"{root}: ImageOrientationPatient {tuple(iop)} is not two unit vectors")
    normal = np.cross(row, col)
    for ds in dsets[1:]:
        if not np.allclose([float(x) for x in ds.ImageOrientationPatient], iop, atol=1e-4):
            raise InputError(f"{root}: slices with different orientations in one series")
    dsets = sorted(dsets, key=lambda d: float(np.array([float(x) for x in d.ImagePositionPatient]) @ normal))
    pos = np.array([[float(x) for x in d.ImagePositionPatient] for d in dsets])
    dz = slice_spacing(pos @ normal, _float(dsets[0], "SliceThickness") or 1.0, str(root))
    ps = [float(x) for x in dsets[0].PixelSpacing]  # (between rows, between columns)
    rows, cols = int(dsets[0].Rows), int(dsets[0].Columns)
    vol = np.empty((cols, rows, len(dsets)), np.float32)
    for k, ds in enumerate(dsets):
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputError(f"{root}: slices of different sizes in one series")
        slope, icpt = _float(ds, "RescaleSlope") or 1.0, _float(ds, "RescaleIntercept") or 0.0
        vol[:, :, k] = (ds.pixel_array.astype(np.float32) * slope + icpt).T
        del ds.PixelData  # keep only the header
    lps = np.eye(4)
    lps[:3, :3] = np.column_stack([row * ps[1], col * ps[0], normal * dz])
    lps[:3, 3] = pos[0]
    affine = lps_to_ras(lps)
    te = _float(dsets[0], "EchoTime")
    props = ImageProps(affine, (ps[1], ps[0], dz), vol.shape, str(root), {"format": "dicom"})
    return DicomSeries(vol, props, kind, None if te is None else te / 1000.0, _float(dsets[0], "MagneticFieldStrength"), dsets)


# ---- output ------------------------------------------------------------------------------------
def _safe(text: str, limit: int = 64) -> str:
    return re.sub(r"[^A-Za-z0-9 _.\-]", "_", str(text))[:limit]


def _slices_geometry(affine: np.ndarray, shape):
    lps = ras_to_lps(affine)
    a = lps[:3, :3]
    spacing = np.linalg.norm(a, axis=0)
    row, col, normal = (a[:, i] / spacing[i] for i in range(3))
    positions = [lps[:3, :3] @ np.array([0.0, 0.0, k]) + lps[:3, 3] for k in range(shape[2])]
    return row, col, spacing, positions


_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "PatientPosition",
    "PositionReferenceIndicator",
    "MagneticFieldStrength",
    "EchoTime",
    "RepetitionTime",
    "FlipAngle",
    "EchoTrainLength",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "Manufacturer",
    "ImagingFrequency",
    "SeriesDate",
    "SeriesTime",
    "BodyPartExamined",
)
_TYPE2_DEFAULTS = {
    "PatientBirthDate": "",
    "PatientSex": "",
    "StudyDate": "",
    "StudyTime": "",
    "StudyID": "",
    "AccessionNumber": "",
    "ReferringPhysicianName": "",
    "PatientPosition": "",
    "Laterality": "",
    "PositionReferenceIndicator": "",
    "Manufacturer": "",
    "ScanningSequence": "GR",
    "SequenceVariant": "NONE",
    "ScanOptions": "",
    "MRAcquisitionType": "3D",
    "RepetitionTime": "",
    "EchoTime": "",
    "EchoTrainLength": "",
    "ImageComments": "pedq-deploy QSM: ppm = stored value x RescaleSlope; referenced to the brain mean",
}


def write_mr_series(
    folder,
    chi_ppm: np.ndarray,
    affine: np.ndarray,
    *,
    source: list | None = None,
    description: str = "PEDQ QSM (ppm = stored x 0.001)",
    series_number: int = 9901,
) -> list[Path]:
    """QSM as a DERIVED MR image series (int16 pixels, RescaleSlope 0.001 -> ppm) in ``folder``.

    ``source`` (DICOM headers of the input series, in slice order) gives the patient and study
    identity, the frame of reference and the referenced series; without it a new study is made.
    """
    _pydicom()  # a one-line error where pydicom is not installed
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    row, col, spacing, positions = _slices_geometry(affine, chi_ppm.shape)
    stored = np.clip(np.rint(np.nan_to_num(chi_ppm) * 1000.0), -32768, 32767).astype(np.int16)
    src = source[0] if source else None
    series_uid = generate_uid()
    study_uid = str(src.StudyInstanceUID) if src is not None and "StudyInstanceUID" in src else generate_uid()
    frame_uid = str(src.FrameOfReferenceUID) if src is not None and "FrameOfReferenceUID" in src else generate_uid()
    refs = []
    for sd in source or []:
        r = Dataset()
        r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID = str(sd.SOPClassUID), str(sd.SOPInstanceUID)
        refs.append(r)
    paths = []
    for k in range(chi_ppm.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        for tag in _COPIED:
            if src is not None and tag in src:
                setattr(ds, tag, getattr(src, tag))
        if "PatientName" not in ds:
            ds.PatientName, ds.PatientID = "Anonymous", "PEDQ"
        for tag, value in _TYPE2_DEFAULTS.items():  # required elements, empty or a neutral value when the source lacks them
            if tag not in ds:
                setattr(ds, tag, value)
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "MR"
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.SeriesDescription = description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{x:.6f}" for x in positions[k]]
        ds.ImageOrientationPatient = [f"{x:.8f}" for x in (*row, *col)]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.SpacingBetweenSlices = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = int(chi_ppm.shape[1]), int(chi_ppm.shape[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "0.001", "0", "PPM"
        ds.WindowCenter, ds.WindowWidth = "0", "200"
        if source:
            ref = Dataset()
            ref.SeriesInstanceUID = str(src.SeriesInstanceUID)
            ref.ReferencedInstanceSequence = refs
            ds.ReferencedSeriesSequence = [ref]
            if k < len(source):
                img = Dataset()
                img.ReferencedSOPClassUID = str(source[k].SOPClassUID)
                img.ReferencedSOPInstanceUID = str(source[k].SOPInstanceUID)
                ds.SourceImageSequence = [img]
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        p = folder / f"QSM_{k + 1:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def write_parametric_map(folder, chi_ppm: np.ndarray, source: list) -> Path:
    """QSM as a DICOM Parametric Map (float32 values, real-world value mapping in ppm), via highdicom."""
    try:
        import highdicom as hd
    except ImportError as exc:
        raise InputError(f"--dicom-format parametric-map needs highdicom: {exc}") from None
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.ascontiguousarray(np.transpose(np.nan_to_num(chi_ppm).astype(np.float32), (2, 1, 0)))  # frames, rows, cols
    ppm = hd.sr.CodedConcept("ppm", "UCUM", "parts per million")
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="chi",
        lut_explanation="magnetic susceptibility (ppm)",
        unit=ppm,
        value_range=(float(pixels.min()), float(pixels.max())),
        slope=1.0,
        intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=_with_pixels(source),
        pixel_array=pixels,
        series_instance_uid=generate_uid(),
        series_number=9903,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="pedq-deploy",
        manufacturer_model_name="pedq-run",
        software_versions=_version(),
        device_serial_number="0",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        series_description="PEDQ QSM (ppm)",
        voi_lut_transformations=[
            hd.VOILUTTransformation(
                window_center=0.0,
                window_width=0.2,
                window_explanation="chi +-0.1 ppm",
                voi_lut_function=hd.VOILUTFunctionValues.LINEAR_EXACT,
            )
        ],
    )
    if "Laterality" not in pm:
        pm.Laterality = ""  # Type 2C of the General Series module; the brain is not a paired organ
    p = folder / "QSM_parametric_map.dcm"
    pm.save_as(p)
    return p


def write_seg(folder, labels: np.ndarray, source: list, names: dict[int, str]) -> Path:
    """The deep grey matter segmentation as a DICOM SEG (one segment per structure present), via highdicom."""
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as exc:
        raise InputError(f"DICOM SEG output needs highdicom: {exc}") from None
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    present = [int(v) for v in np.unique(labels) if v and int(v) in names]
    frames = np.transpose(labels, (2, 1, 0))
    mask = np.stack([frames == v for v in present], axis=-1) if present else np.zeros((*frames.shape, 1), bool)
    descs = []
    for i, v in enumerate(present or [0], start=1):
        descs.append(
            hd.seg.SegmentDescription(
                segment_number=i,
                segment_label=_safe(names.get(v, "none")),
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name="PedQ-NET segmentation", version=_version(), family=codes.DCM.ArtificialIntelligence
                ),
            )
        )
    seg = hd.seg.Segmentation(
        source_images=_with_pixels(source),
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs,
        series_instance_uid=generate_uid(),
        series_number=9902,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="pedq-deploy",
        manufacturer_model_name="pedq-run",
        software_versions=_version(),
        device_serial_number="0",
        series_description="PEDQ deep grey matter",
    )
    p = folder / "DGM_seg.dcm"
    seg.save_as(p)
    return p


def _with_pixels(source: list) -> list:
    """highdicom wants source images with pixel data: re-read them (headers were kept without)."""
    pydicom = _pydicom()
    out = []
    for ds in source:
        full = pydicom.dcmread(ds.filename) if getattr(ds, "filename", None) and os.path.exists(ds.filename) else ds
        for tag, value in _TYPE2_DEFAULTS.items():  # highdicom copies these Type 2 patient/study elements
            if (
                tag in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")
                and tag not in full
            ):
                setattr(full, tag, value)
        out.append(full)
    return out


def _version() -> str:
    from .. import __version__

    return __version__
