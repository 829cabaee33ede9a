"""Fuzzed inputs through pedq-run (in-process): every case ends in success or a one-line error with
exit code 2, never a traceback, a hang or a partial output folder."""

import gzip
import io
import json
import shutil
from contextlib import redirect_stderr
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pedq_deploy.cli.run import main  # noqa: E402

SHAPE = (48, 48, 24)


def _base():
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    head = (g**2).sum(0) < 0.7
    mag = np.where(head, 100.0, 1.0).astype(np.float32)
    phase = np.angle(np.exp(1j * 3.0 * g[2] * head)).astype(np.float32)
    return mag, phase


def run_case(tmp: Path, mutate) -> tuple[int, str]:
    """Write a valid tiny pair, apply ``mutate(paths)``, run pedq-run; return (exit code, stderr)."""
    mag, phase = _base()
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    paths = {"mag": tmp / "mag.nii.gz", "phase": tmp / "phase.nii.gz"}
    nib.save(nib.Nifti1Image(mag, aff), str(paths["mag"]))
    nib.save(nib.Nifti1Image(phase, aff), str(paths["phase"]))
    for k in ("mag", "phase"):
        paths[k].with_name(paths[k].name.replace(".nii.gz", ".json")).write_text(
            json.dumps({"EchoTime": 0.02, "MagneticFieldStrength": 3.0})
        )
    mutate(paths)
    out = tmp / "out"
    err = io.StringIO()
    code = 0
    with redirect_stderr(err):
        try:
            main([str(paths["mag"]), str(paths["phase"]), "-o", str(out), "-q", "--inversion", "tkd", "--models", "none"])
        except SystemExit as e:
            code = int(e.code or 0)
    text = err.getvalue()
    assert "Traceback" not in text, text
    assert code in (0, 2), (code, text)
    if code == 2:
        assert len(text.strip().splitlines()) == 1 and text.startswith("pedq-run: error: "), text
        assert not out.exists(), "an output folder was left by a failed run"
    else:
        assert (out / "provenance.json").is_file()
    leftovers = [p.name for p in tmp.iterdir() if ".partial" in p.name]
    assert leftovers == [], leftovers
    return code, text


def _rewrite(path, fn):
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    hdr = img.header.copy()
    data, hdr = fn(data, hdr)
    nib.save(nib.Nifti1Image(data, None, hdr), str(path))


header_mutations = st.one_of(
    st.tuples(st.just("pixdim"), st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e-9, 1e6])),
    st.tuples(st.just("srow"), st.sampled_from([float("nan"), 0.0, float("inf")])),
    st.tuples(st.just("dtype"), st.sampled_from([np.complex64, np.uint8, np.int16, np.float64, np.int64, np.uint16])),
    st.tuples(st.just("4d"), st.integers(1, 3)),
    st.tuples(st.just("scale"), st.sampled_from([0.0, float("nan"), 1e30, -1.0])),
)


def _apply_header(kind, value, target):
    def fn(paths):
        p = paths[target]
        if kind == "pixdim":

            def f(d, h):
                h["pixdim"][1] = value
                h.set_qform(None, code=0)
                h["sform_code"] = 0
                return d, h
        elif kind == "srow":

            def f(d, h):
                h["srow_x"][0] = value
                h["sform_code"] = 1
                h.set_qform(None, code=0)
                return d, h
        elif kind == "dtype":

            def f(d, h):
                h.set_data_dtype(value)
                return d.astype(value), h
        elif kind == "4d":

            def f(d, h):
                return np.repeat(d[..., None], value + 1, axis=3), h
        else:

            def f(d, h):
                h["scl_slope"] = value
                return d, h

        _rewrite(p, f)

    return fn


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=header_mutations, target=st.sampled_from(["mag", "phase"]))
def test_fuzzed_nifti_headers(tmp_path_factory, mutation, target):
    run_case(tmp_path_factory.mktemp("fuzz"), _apply_header(*mutation, target))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.98), target=st.sampled_from(["mag", "phase"]))
def test_truncated_gzip(tmp_path_factory, cut, target):
    def fn(paths):
        raw = paths[target].read_bytes()
        paths[target].write_bytes(raw[: int(len(raw) * cut)])

    code, _ = run_case(tmp_path_factory.mktemp("trunc"), fn)
    assert code == 2


sidecar_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 100),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.floats(0, 1), max_size=3),
    st.just(4.92),
    st.just(25.0),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(te=sidecar_values, b0=sidecar_values, target=st.sampled_from(["mag", "phase"]))
def test_fuzzed_sidecars(tmp_path_factory, te, b0, target):
    def fn(paths):
        side = paths[target].with_name(paths[target].name.replace(".nii.gz", ".json"))
        side.write_text(json.dumps({"EchoTime": te, "MagneticFieldStrength": b0}))

    code, text = run_case(tmp_path_factory.mktemp("side"), fn)
    if te in (4.92, 25.0):  # EchoTime in ms: named as such
        assert code == 2 and "milliseconds" in text


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["phase_range", "zero_mag", "nan_phase", "const_phase"]), scale=st.floats(5.0, 1e6))
def test_fuzzed_values(tmp_path_factory, kind, scale):
    def fn(paths):
        if kind == "zero_mag":
            _rewrite(paths["mag"], lambda d, h: (np.zeros_like(d), h))
        elif kind == "phase_range":
            _rewrite(paths["phase"], lambda d, h: ((d * scale).astype(np.float32), h))
        elif kind == "nan_phase":
            _rewrite(paths["phase"], lambda d, h: (np.where(d > 0.5, np.nan, d).astype(np.float32), h))
        else:
            _rewrite(paths["phase"], lambda d, h: (np.zeros_like(d), h))

    run_case(tmp_path_factory.mktemp("vals"), fn)


def test_huge_claimed_dimensions_are_refused_before_allocation(tmp_path):
    def fn(paths):
        img = nib.load(str(paths["mag"]))
        hdr = img.header.copy()
        hdr["dim"][1:4] = (30000, 30000, 30000)
        raw = hdr.binaryblock + b"\0" * 4 + np.zeros(100, np.float32).tobytes()
        paths["mag"].write_bytes(gzip.compress(raw))

    code, text = run_case(tmp_path, fn)
    assert code == 2 and ("implausible" in text or "cannot read" in text)


def test_mask_that_misses_the_head(tmp_path):
    mask_path = tmp_path / "mask.nii.gz"
    m = np.zeros(SHAPE, np.uint8)
    m[0, 0, 0] = 1
    nib.save(nib.Nifti1Image(m, np.diag([2.0, 2.0, 3.0, 1.0])), str(mask_path))
    mag, phase = _base()
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(mag, aff), str(tmp_path / "m.nii.gz"))
    nib.save(nib.Nifti1Image(phase, aff), str(tmp_path / "p.nii.gz"))
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as e:
        main(
            [
                str(tmp_path / "m.nii.gz"),
                str(tmp_path / "p.nii.gz"),
                "-o",
                str(tmp_path / "o"),
                "-q",
                "--mask",
                str(mask_path),
                "--echo-time",
                "0.02",
                "--field-strength",
                "3",
                "--inversion",
                "tkd",
            ]
        )
    assert e.value.code == 2 and "Traceback" not in err.getvalue() and not (tmp_path / "o").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
