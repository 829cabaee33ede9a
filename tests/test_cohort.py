"""BIDS studies: discovery (inheritance principle), derivatives, regions.tsv, the report, resume and kills."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from pedq_deploy.errors import InputError
from pedq_deploy.io.bids import find_runs, inherited_metadata, participant_ages
from pedq_deploy.phantom import make_subject, write_bids

SMALL = dict(shape=(40, 40, 24), voxel_size=(3.0, 3.0, 4.0), snr=200.0)
TES = (5e-3, 10e-3, 15e-3)
STUDY = (
    "import sys\nfrom pedq_deploy.cli.study import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code or 0\nelse:\n    code = 0\n"
    "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)\n"
)
# BIDS Derivatives names of our outputs (common derivatives: desc-<label>_mask, _dseg); the raw-style
# _Chimap files are checked with the bids-validator where it is installed
DERIV = re.compile(
    r"^sub-[a-zA-Z0-9]+(_ses-[a-zA-Z0-9]+)?(_acq-[a-zA-Z0-9]+)?(_run-[0-9]+)?"
    r"(_Chimap\.(nii\.gz|json)|_desc-brain_mask\.(nii\.gz|json)|_desc-dgm_dseg\.nii\.gz|_desc-consistency_qcmap\.nii\.gz)$"
)


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory):
    """Four runs: a neonate (one echo), an infant with two sessions (one multi-echo), and a run without its phase."""
    root = tmp_path_factory.mktemp("bids") / "study"
    write_bids(make_subject(seed=21, age="neonate", tilt_deg=10.0, **SMALL), root, "01")
    write_bids(make_subject(seed=22, age="infant", tilt_deg=20.0, echo_time=TES, **SMALL), root, "02", ses="a")
    write_bids(make_subject(seed=23, age="infant", tilt_deg=5.0, **SMALL), root, "02", ses="b")
    write_bids(make_subject(seed=24, age="neonate", **SMALL), root, "03", parts=("mag",))
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t0.5\nsub-02\t10\nsub-03\t1\n")
    (root / "participants.json").write_text(json.dumps({"age": {"Description": "age at scan", "Units": "months"}}))
    (root / "sub-02" / "sub-02_sessions.tsv").write_text("session_id\tage\nses-a\t8\nses-b\t11\n")
    (root / "sub-02" / "sub-02_sessions.json").write_text(json.dumps({"age": {"Units": "months"}}))
    return root


def run_cli(args, env=None):
    return subprocess.run([sys.executable, "-c", STUDY, *map(str, args)], capture_output=True, text=True, timeout=900, env=env)


def test_discovery_finds_runs_echoes_sessions_and_what_is_missing(bids_root):
    runs = {r.name: r for r in find_runs(bids_root)}
    assert set(runs) == {"sub-01", "sub-02_ses-a", "sub-02_ses-b", "sub-03"}
    me = runs["sub-02_ses-a"]
    assert me.suffix == "MEGRE" and [e.index for e in me.echoes] == [1, 2, 3]
    assert me.echo_times == pytest.approx(TES) and me.field_strength == 3.0
    assert runs["sub-01"].suffix == "T2starw" and runs["sub-01"].problem is None
    assert runs["sub-03"].problem == "has no part-phase image"
    assert [r.name for r in find_runs(bids_root, participant_labels=["sub-02"], sessions=["b"])] == ["sub-02_ses-b"]
    with pytest.raises(InputError, match="no such participant"):
        find_runs(bids_root, participant_labels=["07"])
    with pytest.raises(InputError, match="no such session"):
        find_runs(bids_root, sessions=["z"])
    ages = participant_ages(bids_root)  # months -> years; sessions.tsv overrides participants.tsv
    assert ages[("01", None)] == pytest.approx(0.5 / 12) and ages[("02", "a")] == pytest.approx(8 / 12)


def test_sidecar_inheritance_nearest_wins(tmp_path):
    root = tmp_path / "ds"
    write_bids(make_subject(seed=5, **SMALL), root, "01")
    anat = root / "sub-01" / "anat"
    for js in anat.glob("*.json"):  # metadata moved up the tree, as BIDS allows
        meta = json.loads(js.read_text())
        del meta["MagneticFieldStrength"], meta["EchoTime"]
        js.write_text(json.dumps(meta))
    (root / "T2starw.json").write_text(json.dumps({"MagneticFieldStrength": 1.5, "EchoTime": 0.02}))
    (root / "sub-01" / "sub-01_T2starw.json").write_text(json.dumps({"MagneticFieldStrength": 3.0}))
    (anat / "sub-01_part-phase_T2starw.json").write_text(json.dumps({"EchoTime": 0.00492}))
    (anat / "sub-01_part-mag_T2starw.json").write_text(json.dumps({"EchoTime": 0.00492}))
    meta = inherited_metadata(anat / "sub-01_part-phase_T2starw.nii.gz", root)
    assert meta["MagneticFieldStrength"] == 3.0 and meta["EchoTime"] == 0.00492
    run = find_runs(root)[0]
    assert run.problem is None and run.echo_times == (0.00492,) and run.field_strength == 3.0
    (anat / "sub-01_part-mag_T2starw.json").write_text(json.dumps({"EchoTime": 4.92}))  # ms: refused, for this run only
    assert "milliseconds" in find_runs(root)[0].problem


def _regions(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_study_writes_bids_derivatives_regions_report_and_resumes(bids_root, tmp_path):
    out = tmp_path / "derivatives" / "pedq"
    r = run_cli([bids_root, "-o", out, "--scheduler", "none"])
    assert r.returncode == 0, r.stderr
    assert "skipping sub-03_T2starw: has no part-phase image" in r.stderr
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "pedq-deploy"
    assert set(desc["PedqModels"]) == {"mask", "recon", "seg"}
    files = [p for p in out.rglob("*") if p.is_file() and p.parent.name == "anat"]
    assert files and all(DERIV.match(p.name) for p in files), [p.name for p in files if not DERIV.match(p.name)]
    try:
        from bids_validator import BIDSValidator
    except ImportError:
        pass
    else:
        v = BIDSValidator()
        chimaps = [p for p in files if "_Chimap." in p.name]
        assert len(chimaps) == 6 and all(v.is_bids("/" + p.relative_to(out).as_posix()) for p in chimaps)
    me = json.loads((out / "sub-02" / "ses-a" / "anat" / "sub-02_ses-a_Chimap.json").read_text())
    assert me["Units"] == "ppm" and me["EchoTime"] == pytest.approx(list(TES)) and me["PedqProvenance"]["echoes"] == 3
    assert me["Sources"][0] == "bids::sub-02/ses-a/anat/sub-02_ses-a_echo-1_part-mag_MEGRE.nii.gz"
    qsm = nib.load(str(out / "sub-02" / "ses-a" / "anat" / "sub-02_ses-a_Chimap.nii.gz"))
    raw = nib.load(str(bids_root / "sub-02" / "ses-a" / "anat" / "sub-02_ses-a_echo-1_part-mag_MEGRE.nii.gz"))
    assert qsm.shape == raw.shape and np.allclose(qsm.affine, raw.affine, atol=1e-5)
    assert (out / "dseg.tsv").read_text().splitlines()[1] == "10\tLeft-Thalamus\tLT"
    rows = _regions(out / "regions.tsv")
    assert len(rows) == 3 * 8 and {r["run"] for r in rows} == {"sub-01", "sub-02_ses-a", "sub-02_ses-b"}
    assert {r["age_years"] for r in rows if r["run"] == "sub-02_ses-b"} == {f"{11 / 12:.4f}"}
    page = (out / "report.html").read_text()
    for name in ("sub-01_T2starw", "sub-02_ses-a_MEGRE", "sub-02_ses-b_T2starw", "sub-03_T2starw"):
        assert name in page
    assert "has no part-phase image" in page and "against age" in page and "sorted-asc" in page
    for img in re.findall(r"src='([^']+)'", page):
        assert (out / img).is_file()
    stamp = {p: p.stat().st_mtime_ns for p in files}

    # rerun: nothing to do
    r = run_cli([bids_root, "-o", out, "--scheduler", "none"])
    assert r.returncode == 0 and "0 done, 3 up to date" in r.stderr, r.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())
    assert len(_regions(out / "regions.tsv")) == 24
    # an input that changed is redone, the rest kept
    phase = bids_root / "sub-01" / "anat" / "sub-01_part-phase_T2starw.nii.gz"
    img = nib.load(str(phase))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 0.5, img.affine), str(phase))
    r = run_cli([bids_root, "-o", out, "--scheduler", "none", "--participant-label", "01", "--participant-label", "sub-02"])
    assert r.returncode == 0 and "1 done, 2 up to date" in r.stderr, r.stderr


def test_a_study_killed_midway_completes_on_rerun_and_nothing_is_partial(bids_root, tmp_path):
    out = tmp_path / "deriv"
    proc = subprocess.Popen(
        [sys.executable, "-c", STUDY, str(bids_root), "-o", str(out), "--scheduler", "none", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("sub-*/anat/*_Chimap.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = list(out.glob("sub-*/**/anat/*_Chimap.json"))
    assert len(done) < 3  # killed before the end
    for side in done:  # a run with its marker is whole
        for f in json.loads(side.read_text())["PedqProvenance"]["files"]:
            assert (out / f).is_file()
    r = run_cli([bids_root, "-o", out, "--scheduler", "none"])
    assert r.returncode == 0, r.stderr
    c = json.loads((out / "logs" / "pedq_study.json").read_text())["counts"]
    assert c["done"] + c["skipped"] == 3 and c["skipped"] == len(done)
    assert not [p for p in out.rglob(".*partial*")]  # the killed run's staging folder is gone


@pytest.mark.slow
def test_study_on_a_local_dask_cluster_matches_in_process(bids_root, tmp_path):
    pytest.importorskip("distributed")
    a, b = tmp_path / "a", tmp_path / "b"
    for out, sched in ((a, "none"), (b, "local")):
        r = run_cli(
            [bids_root, "-o", out, "--scheduler", sched, "--workers", "2", "--models", "none"]
            if sched == "local"
            else [bids_root, "-o", out, "--scheduler", sched, "--models", "none"]
        )
        assert r.returncode == 0, r.stderr
    assert "local Dask cluster: 2 worker(s)" in r.stderr
    for f in a.rglob("*_Chimap.nii.gz"):
        other = b / f.relative_to(a)
        np.testing.assert_allclose(np.asarray(nib.load(str(other)).dataobj), np.asarray(nib.load(str(f)).dataobj), atol=1e-6)


def test_report_plots_deep_grey_matter_against_age_and_sorts(tmp_path):
    from pedq_deploy.cohort import write_report

    def regions(shift):
        return [
            {"label": lab, "name": str(lab), "voxels": 10, "volume_ml": 0.1, "mean_ppm": 0.01 * (lab % 10) + shift, "std_ppm": 0.01}
            for lab in (10, 11, 12, 13, 49, 50, 51, 52)
        ]

    runs = [
        {
            "run": f"sub-{i}",
            "suffix": "T2starw",
            "subject": str(i),
            "session": None,
            "status": "done",
            "reason": "",
            "seconds": 3.0 + i,
            "qc": {"misfit_noise_ratio": 1.0 + i, "flags": ["x"] if i == 2 else []},
            "coverage": 0.7,
            "echoes": 1,
            "echo_times": [0.005],
            "inversion": "tv",
            "figure": None,
            "regions": regions(0.005 * i),
            "age_years": 0.1 * i,
        }
        for i in range(1, 4)
    ]
    runs.append(
        {**runs[0], "run": "sub-9", "status": "failed", "reason": "phase and magnitude affines differ", "regions": [], "age_years": None}
    )
    page = write_report(tmp_path, {"runs": runs, "counts": {"done": 3, "failed": 1}, "version": "x"}).read_text()
    assert page.count("<circle") == 3 * 4  # three aged runs x four structures (left and right averaged)
    assert page.count("<tr class='flagged'>") == 1 and page.count("<tr class='failed'>") == 1
    assert "phase and magnitude affines differ" in page and "5.2 wk" in page and "2.4 mo" in page


def test_study_option_errors_are_one_line(bids_root, tmp_path):
    for args, msg in (
        ([tmp_path / "nope"], "BIDS folder not found"),
        ([tmp_path], "not a BIDS dataset"),
        ([bids_root, "--participant-label", "09"], "no such participant"),
        ([bids_root, "--echo-time", "0.005"], "No such option"),
        ([bids_root, "--workers", "0"], "at least 1"),
    ):
        r = run_cli([*args, "-o", tmp_path / "o"])
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "o").exists()


def test_report_renders_in_a_real_browser(bids_root, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium installed: the report was checked as HTML only")
    out = tmp_path / "deriv"
    assert run_cli([bids_root, "-o", out, "--scheduler", "none", "--models", "none"]).returncode == 0
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1400,900",
            (out / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 30_000  # a blank 1400x900 page compresses to a few kB: text, table and thumbnails drew


def test_plan_workers_gives_each_worker_two_cores_and_its_share_of_the_memory():
    from pedq_deploy.cohort import plan_workers

    runs = [object()] * 10  # unreadable headers: the 1 GB floor of the estimate applies
    gb = 1 << 30
    assert plan_workers(runs, cores=2, memory=20 * gb)[:2] == (1, 2)
    assert plan_workers(runs, cores=16, memory=64 * gb)[:2] == (8, 2)
    assert plan_workers(runs, cores=16, memory=4 * gb)[:2] == (3, 5)  # memory-bound: 0.8 * 4 GB / 1 GB
    assert plan_workers(runs, cores=1, memory=20 * gb)[:2] == (1, 1)
    assert plan_workers(runs[:2], cores=16, memory=64 * gb)[:2] == (2, 8)  # no more workers than runs
    n, _, mem = plan_workers(runs, cores=4, memory=10 * gb)
    assert n == 2 and mem == int(0.9 * 10 * gb / 2)
