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


def run_cli(main, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.err


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


def test_pedq_run_tv_quality_with_given_mask_and_siemens_phase(phantom_dir, tmp_path, capsys):
    ph = nib.load(str(phantom_dir / "phase.nii.gz"))
    ints = np.clip(np.round(ph.get_fdata() / np.pi * 4096), -4096, 4095).astype(np.int16)
    nib.save(nib.Nifti1Image(ints, ph.affine), str(tmp_path / "phase_int.nii.gz"))
    out = tmp_path / "tv"
    code, err = run_cli(run_main, [str(phantom_dir / "magnitude.nii.gz"), str(tmp_path / "phase_int.nii.gz"), "-o", str(out),
                                   "--inversion", "tv", "--unwrap", "quality", "--mask", str(phantom_dir / "brain_mask.nii.gz"),
                                   "--echo-time", "0.00492", "--field-strength", "3"], capsys)
    assert code == 0, err
    assert "-4096..4095" in err
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["mask_source"] == "given" and prov["parameters"]["inversion"] == "tv"


def test_pedq_run_regions_from_given_labels(phantom_dir, tmp_path, capsys):
    """--labels (e.g. a registered atlas) replaces the segmentation network: regions.csv holds each
    structure's voxels where chi has values and the mean of the written QSM there."""
    out = tmp_path / "lab"
    code, err = run_cli(run_main, [str(phantom_dir / "magnitude.nii.gz"), str(phantom_dir / "phase.nii.gz"), "-o", str(out),
                                   "--inversion", "tkd", "--mask", str(phantom_dir / "brain_mask.nii.gz"),
                                   "--labels", str(phantom_dir / "labels.nii.gz")], capsys)
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


def _write(path, data, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
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
        "refining no network map": ([good_m, good_p, "--inversion", "tkd", "--refine"] + te, "needs --inversion pedq"),
        "refine weight not positive": ([good_m, good_p, "--inversion", "pedq", "--refine", "--refine-weight", "0"] + te, "must be positive"),
        "refine lambda not positive": ([good_m, good_p, "--inversion", "pedq", "--refine", "--refine-lambda", "-1e-4"] + te, "TV weight must be positive"),
        "edge weight out of range": ([good_m, good_p, "--inversion", "pedq", "--refine", "--refine-edge-weight", "1.5"] + te, "must lie in [0, 1]"),
        "edge band below 1": ([good_m, good_p, "--inversion", "pedq", "--refine", "--refine-edge-weight", "0", "--refine-edge-band", "0"] + te,
                              "edge band"),
        "unknown edge mode": ([good_m, good_p, "--inversion", "pedq", "--refine", "--refine-edge-mode", "sideways"] + te, "sideways"),
        "labels not whole numbers": ([good_m, good_p, "--labels", _write(tmp_path / "prob.nii.gz", np.full(m.shape, 0.5, np.float32), aff)] + te,
                                     "whole numbers"),
        "labels off the grid": ([good_m, good_p, "--labels", _write(tmp_path / "lab_small.nii.gz", np.zeros(m.shape, np.uint8)[:-2], aff)] + te,
                                "labels are not on"),
    }


def test_refine_defaults_are_the_pipelines():
    from pedq_deploy.cli.run import command
    from pedq_deploy.runtime.pipeline import (REFINE_EDGE_BAND, REFINE_EDGE_MODE, REFINE_EDGE_WEIGHT, REFINE_LAMBDA, REFINE_WEIGHT,
                                              PipelineConfig)

    assert next(p for p in command.params if p.name == "refine_weight").default == REFINE_WEIGHT
    assert next(p for p in command.params if p.name == "refine_lambda").default == REFINE_LAMBDA == PipelineConfig.refine_lambda
    assert next(p for p in command.params if p.name == "refine_edge_weight").default == REFINE_EDGE_WEIGHT == PipelineConfig.refine_edge_weight
    assert next(p for p in command.params if p.name == "refine_edge_band").default == REFINE_EDGE_BAND == PipelineConfig.refine_edge_band
    assert next(p for p in command.params if p.name == "refine_edge_mode").default == REFINE_EDGE_MODE == PipelineConfig.refine_edge_mode


def test_pipeline_config_rejects_an_unknown_edge_mode():
    from pedq_deploy.errors import InputError
    from pedq_deploy.runtime.pipeline import REFINE_EDGE_MODES, PipelineConfig

    for mode in REFINE_EDGE_MODES:
        PipelineConfig(echo_time=5e-3, field_strength=3.0, inversion="pedq", refine_weight=0.03, refine_edge_mode=mode).validate()
    with pytest.raises(InputError, match="edge mode 'sideways'"):
        PipelineConfig(echo_time=5e-3, field_strength=3.0, inversion="pedq", refine_weight=0.03, refine_edge_mode="sideways").validate()


@pytest.mark.parametrize("case", ["missing file", "not 3D", "shape mismatch", "affine mismatch", "NaN phase",
                                  "non-positive echo time", "echo time in ms", "empty mask", "phase out of range",
                                  "unknown option value", "refining no network map", "refine weight not positive", "refine lambda not positive",
                                  "edge weight out of range", "edge band below 1", "unknown edge mode", "labels not whole numbers", "labels off the grid"])
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
    r = subprocess.run([exe, str(tmp_path / "missing.nii.gz"), str(phantom_dir / "phase.nii.gz"), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not found" in r.stderr
    code = ("import sys; from pedq_deploy.cli.run import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code, str(phantom_dir / "magnitude.nii.gz"), str(phantom_dir / "phase.nii.gz"),
                        "-o", str(tmp_path / "fresh"), "-q"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
