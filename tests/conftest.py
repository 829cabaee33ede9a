from __future__ import annotations

import numpy as np
import pytest

SMALL_SHAPE = (72, 72, 48)
SMALL_VOXEL = (2.0, 2.0, 3.0)
# a training config that trains in seconds (networks of a few thousand weights, tiny grids)
TINY_TRAIN = dict(
    patch=(32, 32, 32),
    grid=(48, 48, 40),
    voxel_size=(3.0, 3.0, 3.0),
    frame_voxel=3.0,
    batch_size=1,
    crops_per_subject=2,
    recon_filters=4,
    recon_levels=3,
    unetr_feature_size=8,
    unetr_hidden_size=48,
    unetr_mlp_dim=96,
    unetr_heads=4,
    seg_region=(32, 32, 32),
    recon_window=(16, 16, 16),
    lr=2e-3,
    val_seeds=(2000,),
    device="cpu",
)


def grid_mm(shape, voxel_size):
    """Voxel-frame mm coordinates centred on the grid, as three broadcastable arrays."""
    return [
        ((np.arange(n) - (n - 1) / 2.0) * v).reshape([-1 if a == i else 1 for i in range(3)])
        for a, (n, v) in enumerate(zip(shape, voxel_size))
    ]


def ball(shape, voxel_size, center, radius, supersample=4):
    """Partial-volume ball (fraction of each voxel inside), float32."""
    out = np.zeros(shape, np.float32)
    offs = (np.arange(supersample) + 0.5) / supersample - 0.5
    x, y, z = grid_mm(shape, voxel_size)
    for ox in offs:
        for oy in offs:
            for oz in offs:
                out += (x + ox * voxel_size[0] - center[0]) ** 2 + (y + oy * voxel_size[1] - center[1]) ** 2 + (
                    z + oz * voxel_size[2] - center[2]
                ) ** 2 <= radius**2
    return out / supersample**3


@pytest.fixture(scope="session")
def small_subject():
    from pedq_deploy.phantom import make_subject

    return make_subject(seed=7, age="neonate", shape=SMALL_SHAPE, voxel_size=SMALL_VOXEL, tilt_deg=20.0)


@pytest.fixture(scope="session")
def small_subject_noise_free():
    from pedq_deploy.phantom import make_subject

    return make_subject(seed=7, age="infant", shape=SMALL_SHAPE, voxel_size=SMALL_VOXEL, tilt_deg=25.0, snr=float("inf"))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory, small_subject):
    from pedq_deploy.phantom import write_subject

    d = tmp_path_factory.mktemp("phantom")
    write_subject(small_subject, d)
    return d
