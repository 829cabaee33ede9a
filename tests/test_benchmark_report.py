"""The benchmarks' report helpers: a model's lineage follows its own role through the manifests."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("_report", Path(__file__).resolve().parents[1] / "benchmarks" / "_report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def _run(steps, hours, hardware, init_from=None):
    return {"kind": "joint", "steps": steps, "train_seconds": hours * 3600, "hardware": [hardware], "init_from": init_from}


def test_a_network_started_fresh_does_not_inherit_another_networks_history():
    cpu = _run(765, 1.74, "cpu")
    # the GPU run loaded only the reconstruction U-Net (--init-roles recon): both exports carry this record
    gpu = _run(2311, 0.1, "cuda", init_from={"recon": {"training": cpu}})
    assert [t["steps"] for t in report.training_chain(gpu, "recon")] == [765, 2311]
    assert [t["steps"] for t in report.training_chain(gpu, "seg")] == [2311]
    text = report.describe_chain(report.training_chain(gpu, "recon"))
    assert text.startswith("joint run, 2311 steps, 0.10 h on cuda") and "after 765 steps (1.74 h) on cpu" in text
    assert report.describe_chain(report.training_chain(gpu, "seg")) == "joint run, 2311 steps, 0.10 h on cuda"


def test_benchmark_heads_are_never_training_heads():
    from pedq_deploy.phantom.sources import SEEDS
    from pedq_deploy.training.config import TrainConfig

    cfg = TrainConfig()
    train = set(range(*cfg.train_seeds))
    assert train <= set(SEEDS["train"])
    held_out, validation = set(report.HELD_OUT_SEEDS), set(report.VALIDATION_SEEDS)
    assert len(held_out) >= 10 and len(validation) >= 4
    assert not held_out & train and not validation & train
    # choices are made on the validation heads: they must not be the held-out heads that are reported
    assert not held_out & validation
    # training's own validation crops come from validation heads, never from held-out ones
    assert set(cfg.val_seeds) <= validation
