"""DICOM in and out: phantom -> Siemens-style DICOM series -> pedq-run -> DICOM QSM -> read back."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from pedq_deploy.io.dicom import read_dicom_folder  # noqa: E402
from pedq_deploy.phantom import make_subject  # noqa: E402

RUN = "import sys\nfrom pedq_deploy.cli.run import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    sys.exit(e.code or 0)\n"
STUDY = generate_uid()
FRAME = generate_uid()


def write_series(folder: Path, volume, affine, kind, te_ms=4.92, b0=3.0, series_number=1):
    """One DICOM file per slice, as a scanner writes a GRE series (phase: stored 0..4095, slope 2, intercept -4096)."""
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    a = lps[:3, :3]
    sp = np.linalg.norm(a, axis=0)
    row, col = a[:, 0] / sp[0], a[:, 1] / sp[1]
    series = generate_uid()
    if kind == "P":
        stored = np.clip(np.round((volume + np.pi) * 4096 / (2 * np.pi)), 0, 4095).astype(np.uint16)
    else:
        stored = np.clip(np.round(volume / volume.max() * 4000), 0, 4095).astype(np.uint16)
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "Baby^Test", "P0001", STUDY, series
        ds.FrameOfReferenceUID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = FRAME, "MR", series_number, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", kind, "ND"]
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "20260101", "F", "20260301", "101500"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName, ds.Manufacturer = "1", "A1", "", "SIEMENS"
        ds.EchoTime, ds.MagneticFieldStrength, ds.EchoNumbers = f"{te_ms}", f"{b0}", 1
        ds.ImagePositionPatient = [f"{x:.6f}" for x in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]]
        ds.ImageOrientationPatient = [f"{x:.8f}" for x in (*row, *col)]
        ds.PixelSpacing = [f"{sp[1]:.6f}", f"{sp[0]:.6f}"]
        ds.SliceThickness = f"{sp[2]:.6f}"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if kind == "P":
            ds.RescaleSlope, ds.RescaleIntercept = "2", "-4096"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds.save_as(folder / f"IM_{kind}_{k:04d}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def dicom_scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    s = make_subject(seed=11, shape=(64, 64, 24), voxel_size=(3.0, 3.0, 4.0), tilt_deg=12.0, snr=200.0)
    write_series(root / "mag", s.magnitude, s.affine, "M", series_number=1)
    write_series(root / "pha", s.phase, s.affine, "P", series_number=2)
    both = root / "both"
    both.mkdir()
    for f in list((root / "mag").iterdir()) + list((root / "pha").iterdir()):
        (both / f.name).write_bytes(f.read_bytes())
    return s, root


def run(args):
    return subprocess.run([sys.executable, "-c", RUN, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_reader_geometry_and_siemens_phase(dicom_scan):
    s, root = dicom_scan
    series = read_dicom_folder(root / "both")
    m, p = series["M"], series["P"]
    np.testing.assert_allclose(m.props.affine, s.affine, atol=1e-4)
    assert m.props.voxel_size == pytest.approx(s.voxel_size)
    assert m.echo_time == pytest.approx(4.92e-3) and m.field_strength == pytest.approx(3.0)
    assert p.data.min() >= -4096 and p.data.max() <= 4094  # rescaled by slope 2, intercept -4096
    assert np.abs(m.data).max() > 0


def test_round_trip_dicom_in_dicom_out_matches_the_nifti_output(dicom_scan, tmp_path):
    s, root = dicom_scan
    r = run(
        [
            root / "mag",
            root / "pha",
            "-o",
            tmp_path / "a",
            "--inversion",
            "tkd",
            "--models",
            "none",
            "--dicom-out",
            tmp_path / "a_dcm",
            "-q",
        ]
    )
    assert r.returncode == 0, r.stderr
    r2 = run([root / "both", "-o", tmp_path / "b", "--inversion", "tkd", "--models", "none", "-q"])
    assert r2.returncode == 0, r2.stderr
    qa = nib.load(str(tmp_path / "a" / "qsm.nii.gz"))
    qb = nib.load(str(tmp_path / "b" / "qsm.nii.gz"))
    np.testing.assert_array_equal(np.asarray(qa.dataobj), np.asarray(qb.dataobj))  # one folder or two: same result
    np.testing.assert_allclose(qa.affine, s.affine, atol=1e-4)
    prov = json.loads((tmp_path / "a" / "provenance.json").read_text())
    assert prov["acquisition"]["echo_time_s"] == pytest.approx(4.92e-3) and "DICOM" in prov["acquisition"]["source"]
    # read the DICOM QSM back: same values to the 0.001 ppm step, same geometry, same study, a new series
    files = sorted((tmp_path / "a_dcm").glob("*.dcm"))
    assert len(files) == s.magnitude.shape[2]
    ds = [pydicom.dcmread(f) for f in files]
    assert {d.StudyInstanceUID for d in ds} == {STUDY} and ds[0].PatientID == "P0001"
    assert ds[0].SeriesInstanceUID not in (d.SeriesInstanceUID for d in read_dicom_folder(root / "mag")["M"].datasets)
    assert "DERIVED" in ds[0].ImageType and ds[0].ReferencedSeriesSequence[0].SeriesInstanceUID
    vol = np.stack(
        [d.pixel_array.T * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in sorted(ds, key=lambda d: int(d.InstanceNumber))],
        axis=2,
    )
    np.testing.assert_allclose(vol, np.asarray(qa.dataobj), atol=0.0005 + 1e-6)
    assert np.allclose([float(x) for x in ds[0].ImagePositionPatient], [-s.affine[0, 3], -s.affine[1, 3], s.affine[2, 3]], atol=1e-3)


def test_dicom_input_errors_are_one_line(dicom_scan, tmp_path):
    s, root = dicom_scan
    r = run([root / "mag", "-o", tmp_path / "x", "-q"])  # magnitude only
    assert r.returncode == 2 and "no phase series" in r.stderr and "Traceback" not in r.stderr
    r = run([root / "pha", root / "pha", "-o", tmp_path / "y", "-q"])  # phase where magnitude belongs
    assert r.returncode == 2 and "no magnitude" in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _dciodvfy_errors(path):
    import shutil

    if shutil.which("dciodvfy") is None:
        return None
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


def test_parametric_map_output_and_the_dicom_validator(dicom_scan, tmp_path):
    s, root = dicom_scan
    r = run(
        [
            root / "both",
            "-o",
            tmp_path / "a",
            "--inversion",
            "tkd",
            "--models",
            "none",
            "-q",
            "--dicom-out",
            tmp_path / "pm",
            "--dicom-format",
            "parametric-map",
        ]
    )
    assert r.returncode == 0, r.stderr
    (pm_file,) = list((tmp_path / "pm").glob("*.dcm"))
    pm = pydicom.dcmread(pm_file)
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and pm.StudyInstanceUID == STUDY
    qsm = np.asarray(nib.load(str(tmp_path / "a" / "qsm.nii.gz")).dataobj)
    # frames in the order of their positions along the slice normal = the volume's z
    iop = np.array([float(x) for x in pm.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    pos = [
        np.array([float(x) for x in f.PlanePositionSequence[0].ImagePositionPatient]) @ normal for f in pm.PerFrameFunctionalGroupsSequence
    ]
    frames = pm.pixel_array[np.argsort(pos)]
    np.testing.assert_allclose(np.transpose(frames, (2, 1, 0)), qsm, atol=1e-6)  # float values, no rescale step
    run([root / "both", "-o", tmp_path / "b", "--inversion", "tkd", "--models", "none", "-q", "--dicom-out", tmp_path / "mr"])
    for f in (pm_file, sorted((tmp_path / "mr").glob("*.dcm"))[0]):
        errors = _dciodvfy_errors(f)
        if errors is None:
            pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
        assert errors == [], errors
