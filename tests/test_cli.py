"""The pedq-run contract: outputs on the input grid, one-line errors with exit code 2, no partial output."""

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from numpy.testing import assert_allclose

from pedq_deploy.cli.evaluate import main as eval_main
from pedq_deploy.cli.run import main as run_main


def run_cli(main, argv, capsys, stream="err"):
    """(exit code, what the command wrote to ``stream``)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    return exc.value.code or 0, getattr(capsys.readouterr(), stream)


def test_pedq_run_end_to_end_without_torch(phantom_dir, tmp_path, capsys):
    out = tmp_path / "out"
    torch_before = "torch" in sys.modules  # the training tests may have loaded it in this session
    code, err = run_cli(run_main, [str(phantom_dir / "magnitude.nii.gz"), str(phantom_dir / "phase.nii.gz"), "-o", str(out)], capsys)
    assert code == 0, err
    if not torch_before:  # test_console_scripts_run_in_a_fresh_process checks this in a clean process
        assert "torch" not in sys.modules
    assert "inversion" in err and "assumed radians" in err
    ref = nib.load(str(phantom_dir / "magnitude.nii.gz"))
    for name, dtype in [("mask", np.uint8), ("phase_unwrapped", np.float32), ("local_field", np.float32), ("qsm", np.float32)]:
        img = nib.load(str(out / f"{name}.nii.gz"))
        assert img.shape == ref.shape
        assert_allclose(img.affine, ref.affine, atol=1e-5)
        assert img.get_data_dtype() == dtype
    prov = json.loads((out / "provenance.json").read_text())
    truth = json.loads((phantom_dir / "phantom.json").read_text())
    assert_allclose(prov["b0_direction_voxel_frame"], truth["b0_direction_voxel_frame"], atol=1e-5)
    assert prov["acquisition"]["echo_time_s"] == pytest.approx(4.92e-3)  # from the sidecar
    assert set(prov["timings_s"]) >= {"load", "mask", "unwrap", "background", "inversion", "write", "total"}
    assert not list(tmp_path.glob(".out.partial-*"))
    # and it can be scored against the phantom truth
    code, err = run_cli(eval_main, [str(out), "--truth", str(phantom_dir)], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"nrmse", "hfen", "ssim", "xsim", "coverage", "dgm_edge_sharpness", "regions"} <= set(metrics["qsm"])
    assert metrics["mask"]["dice"] > 0.75


def write_config(path, **settings):
    """A TOML settings file as pedq-run --config reads it."""
    from pedq_deploy.config import _toml_value

    path.write_text("[pipeline]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in settings.items()))
    return str(path)


def test_pedq_run_tv_quality_with_given_mask_and_siemens_phase(phantom_dir, tmp_path, capsys):
    ph = nib.load(str(phantom_dir / "phase.nii.gz"))
    ints = np.clip(np.round(ph.get_fdata() / np.pi * 4096), -4096, 4095).astype(np.int16)
    nib.save(nib.Nifti1Image(ints, ph.affine), str(tmp_path / "phase_int.nii.gz"))
    out = tmp_path / "tv"
    config = write_config(tmp_path / "tv.toml", inversion="tkd", unwrap="quality", tv_iterations=30)
    code, err = run_cli(
        run_main,
        [
            str(phantom_dir / "magnitude.nii.gz"),
            str(tmp_path / "phase_int.nii.gz"),
            "-o",
            str(out),
            "--config",
            config,
            "--inversion",
            "tv",
            "--mask",
            str(phantom_dir / "brain_mask.nii.gz"),
            "--echo-time",
            "0.00492",
            "--field-strength",
            "3",
        ],
        capsys,
    )
    assert code == 0, err
    assert "-4096..4095" in err
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["mask_source"] == "given" and prov["inversion"] == "tv"  # --inversion over the file's
    assert prov["parameters"]["unwrap"] == "quality" and prov["parameters"]["tv_iterations"] == 30  # the file over the defaults


def test_pedq_run_regions_from_given_labels(phantom_dir, tmp_path, capsys):
    """--labels (e.g. a registered atlas) replaces the segmentation network: regions.csv holds each
    structure's voxels where chi has values and the mean of the written QSM there."""
    out = tmp_path / "lab"
    code, err = run_cli(
        run_main,
        [
            str(phantom_dir / "magnitude.nii.gz"),
            str(phantom_dir / "phase.nii.gz"),
            "-o",
            str(out),
            "--inversion",
            "tkd",
            "--mask",
            str(phantom_dir / "brain_mask.nii.gz"),
            "--labels",
            str(phantom_dir / "labels.nii.gz"),
        ],
        capsys,
    )
    assert code == 0, err
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["segmentation_source"] == "labels file" and len(prov["inputs"]["labels"]["sha256"]) == 64
    qsm = nib.load(str(out / "qsm.nii.gz")).get_fdata()
    seg = np.asarray(nib.load(str(out / "segmentation.nii.gz")).dataobj)
    labels = np.asarray(nib.load(str(phantom_dir / "labels.nii.gz")).dataobj)
    covered = qsm != 0  # the V-SHARP-eroded mask, where chi has values
    np.testing.assert_array_equal(seg, np.where(covered, labels, 0))
    rows = [line.split(",") for line in (out / "regions.csv").read_text().strip().splitlines()[1:]]
    assert len(rows) == 8
    assert all(r[6] == "ok" for r in rows)  # the true labels pass the segmentation checks
    for label, _, voxels, _, mean, _, _ in rows:
        sel = seg == int(label)
        assert int(voxels) == int(sel.sum())
        if sel.any():
            assert float(mean) == pytest.approx(qsm[sel].mean(), abs=1e-6)
    assert sum(int(r[2]) for r in rows) > 0
    # the quick look goes through the deep grey matter: every structure's colour is on it
    from pedq_deploy.io.quicklook import _STRUCTURES, display_window

    png = read_png(out / "quicklook.png")
    for name, _, colour in _STRUCTURES:
        blended = np.all(np.abs(png.astype(int) - (0.55 * np.array(colour))[None, None]) <= 0.45 * 255 + 1, axis=-1)
        swatch = np.all(png == np.array(colour, np.uint8), axis=-1)
        assert swatch.sum() >= 100, name  # its legend
        assert blended.sum() > swatch.sum(), name  # and the structure itself, over the map
    brain = nib.load(str(phantom_dir / "brain_mask.nii.gz")).get_fdata() > 0
    w = display_window(qsm, brain)
    assert 0 < w < 0.1 and w == pytest.approx(np.percentile(np.abs(qsm[brain & (qsm != 0)]), 98))


def read_png(path):
    """The RGB pixels of a PNG written by pedq_deploy.io.quicklook (8-bit RGB, no filter)."""
    import struct
    import zlib

    data = path.read_bytes()
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        n, tag = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + n]
        if tag == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + 3 * width)
    assert not raw[:, 0].any()
    return raw[:, 1:].reshape(height, width, 3)


def _text(path, text):
    path.write_text(text)
    return path


def _write(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return str(path)


@pytest.fixture()
def bad_inputs(phantom_dir, tmp_path):
    mag = nib.load(str(phantom_dir / "magnitude.nii.gz"))
    ph = nib.load(str(phantom_dir / "phase.nii.gz"))
    m, p, aff = mag.get_fdata().astype(np.float32), ph.get_fdata().astype(np.float32), mag.affine
    good_m, good_p = str(phantom_dir / "magnitude.nii.gz"), str(phantom_dir / "phase.nii.gz")
    nan_p = p.copy()
    nan_p[3, 3, 3] = np.nan
    shutil.copy(phantom_dir / "magnitude.nii.gz", tmp_path / "ms.nii.gz")
    (tmp_path / "ms.json").write_text(json.dumps({"EchoTime": 4.92, "MagneticFieldStrength": 3}))
    te = ["--echo-time", "0.00492", "--field-strength", "3"]
    return {
        "missing file": ([str(tmp_path / "nope.nii.gz"), good_p] + te, "not found"),
        "not 3D": ([_write(tmp_path / "m4.nii.gz", np.stack([m, m], -1), aff), good_p] + te, "3D"),
        "shape mismatch": ([good_m, _write(tmp_path / "p_small.nii.gz", p[:-2], aff)] + te, "differs"),
        "affine mismatch": ([good_m, _write(tmp_path / "p_aff.nii.gz", p, aff @ np.diag([1, 1, 1.5, 1]))] + te, "affine"),
        "NaN phase": ([good_m, _write(tmp_path / "p_nan.nii.gz", nan_p, aff)] + te, "NaN"),
        "non-positive echo time": ([good_m, good_p, "--echo-time", "-0.001", "--field-strength", "3"], "echo time"),
        "echo time in ms": ([str(tmp_path / "ms.nii.gz"), good_p, "--field-strength", "3"], "milliseconds"),
        "empty mask": ([good_m, good_p, "--mask", _write(tmp_path / "empty.nii.gz", np.zeros(m.shape, np.uint8), aff)] + te, "empty"),
        "phase out of range": ([good_m, _write(tmp_path / "p_big.nii.gz", p * 10, aff)] + te, "no known format"),
        "unknown option value": ([good_m, good_p, "--inversion", "magic"] + te, "magic"),
        "refining no network map": (
            [good_m, good_p, "--inversion", "tkd", "--config", write_config(tmp_path / "r.toml", refine=True)] + te,
            "needs inversion pedq",
        ),
        "refine weight not positive": (
            [good_m, good_p, "--config", write_config(tmp_path / "w.toml", refine=True, refine_weight=0)] + te,
            "refine_weight must be a positive number",
        ),
        "edge weight out of range": (
            [good_m, good_p, "--config", write_config(tmp_path / "e.toml", refine_edge_weight=1.5)] + te,
            "must lie in [0, 1]",
        ),
        "edge band below 1": ([good_m, good_p, "--config", write_config(tmp_path / "b.toml", refine_edge_band=0)] + te, "refine_edge_band"),
        "unknown setting": (
            [good_m, good_p, "--config", write_config(tmp_path / "u.toml", mask_mirror=True)] + te,
            "unknown settings mask_mirror",
        ),
        "acquisition in the config": (
            [good_m, good_p, "--config", write_config(tmp_path / "a.toml", echo_time=0.005)] + te,
            "belong to the scan",
        ),
        "config not TOML": ([good_m, good_p, "--config", str(_text(tmp_path / "bad.toml", "unwrap = [lsq"))] + te, "not valid TOML"),
        "echo time option in ms": ([good_m, good_p, "--echo-time", "4.92", "--field-strength", "3"], "that is 0.00492 s"),
        "magnitude and phase swapped": ([good_p, good_m] + te, "wrong order"),
        "phase not negative anywhere": ([good_m, _write(tmp_path / "p_pos.nii.gz", np.abs(p), aff)] + te, "no negative values"),
        "labels not whole numbers": (
            [good_m, good_p, "--labels", _write(tmp_path / "prob.nii.gz", np.full(m.shape, 0.5, np.float32), aff)] + te,
            "whole numbers",
        ),
        "labels off the grid": (
            [good_m, good_p, "--labels", _write(tmp_path / "lab_small.nii.gz", np.zeros(m.shape, np.uint8)[:-2], aff)] + te,
            "labels are not on",
        ),
    }


def test_every_setting_has_one_default_and_print_config_round_trips(tmp_path, capsys):
    """The defaults live in PipelineConfig alone: the CLI's options carry none of them, and the file
    --print-config writes reads back as exactly those defaults."""
    from dataclasses import fields

    from pedq_deploy.cli.run import command
    from pedq_deploy.config import PipelineConfig, parameter_names, read_config_file

    options = {p.name for p in command.params}
    assert options & set(parameter_names()) == {"inversion"}
    assert command.make_context("pedq-run", ["mag.nii.gz", "-o", "out"]).params["inversion"] is None  # the config's, unless given
    code, out = run_cli(run_main, ["--print-config"], capsys, "out")
    assert code == 0 and "[pipeline]" in out
    (tmp_path / "defaults.toml").write_text(out)
    read = read_config_file(tmp_path / "defaults.toml")
    defaults = {f.name: f.default for f in fields(PipelineConfig) if f.name in parameter_names() and f.default is not None}
    assert read == defaults
    assert sum(1 for line in out.splitlines() if line.startswith("# ")) >= len(parameter_names())


def test_help_fits_one_screen(capsys):
    code, out = run_cli(run_main, ["--help"], capsys, "out")
    assert code == 0 and len(out.splitlines()) <= 40


def test_a_non_empty_outdir_is_refused_and_overwrite_replaces_it_whole(phantom_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("a user's own file")
    argv = [
        str(phantom_dir / "magnitude.nii.gz"),
        str(phantom_dir / "phase.nii.gz"),
        "-o",
        str(out),
        "--inversion",
        "tkd",
        "--models",
        "none",
        "-q",
    ]
    code, err = run_cli(run_main, argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "metrics.json").write_text("{}")  # a stale result of an earlier run
    code, err = run_cli(run_main, argv + ["--overwrite"], capsys)
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert "qsm.nii.gz" in names and "provenance.json" in names and not names & {"notes.txt", "metrics.json"}
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # not the staging folder's private permissions
    assert not list(tmp_path.glob(".out.partial-*"))
    code, err = run_cli(
        run_main,
        [
            str(phantom_dir / "magnitude.nii.gz"),
            str(phantom_dir / "phase.nii.gz"),
            "-o",
            str(tmp_path / "new"),
            "--inversion",
            "tkd",
            "--models",
            "none",
        ],
        capsys,
    )
    assert code == 0 and "of the brain mask it used (mask.nii.gz" in err  # says of which mask its coverage is


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "not 3D",
        "shape mismatch",
        "affine mismatch",
        "NaN phase",
        "non-positive echo time",
        "echo time in ms",
        "empty mask",
        "phase out of range",
        "unknown option value",
        "refining no network map",
        "refine weight not positive",
        "edge weight out of range",
        "edge band below 1",
        "unknown setting",
        "acquisition in the config",
        "config not TOML",
        "echo time option in ms",
        "magnitude and phase swapped",
        "phase not negative anywhere",
        "labels not whole numbers",
        "labels off the grid",
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_output(case, bad_inputs, tmp_path, capsys):
    argv, message = bad_inputs[case]
    out = tmp_path / "out"
    code, err = run_cli(run_main, argv + ["-o", str(out), "-q"], capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("pedq-run: error:"), err
    assert message.lower() in lines[0].lower()
    assert "Traceback" not in err
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_console_scripts_run_in_a_fresh_process(phantom_dir, tmp_path):
    """The installed entry point: a real process, exit code 2 and no traceback on bad input."""
    exe = shutil.which("pedq-run", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe is not None
    r = subprocess.run(
        [exe, str(tmp_path / "missing.nii.gz"), str(phantom_dir / "phase.nii.gz"), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not found" in r.stderr
    code = (
        "import sys; from pedq_deploy.cli.run import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(phantom_dir / "magnitude.nii.gz"),
            str(phantom_dir / "phase.nii.gz"),
            "-o",
            str(tmp_path / "fresh"),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
