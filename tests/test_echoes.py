"""Multi-echo combination: temporal unwrapping and the weighted echo fit."""

import numpy as np
import pytest
from conftest import ball, grid_mm
from numpy.testing import assert_allclose

from pedq_deploy.errors import InputError
from pedq_deploy.physics import GAMMA_MHZ_PER_T
from pedq_deploy.preprocess import combine_echoes, vsharp

TES = (4e-3, 8e-3, 12e-3, 16e-3)
SCALE = 2 * np.pi * GAMMA_MHZ_PER_T * 3.0  # rad/s per ppm at 3 T


def _signal(field_ppm, offset, magnitude, tes=TES):
    phase = np.stack([np.angle(np.exp(1j * (offset + SCALE * field_ppm * te))) for te in tes], axis=-1)
    return phase.astype(np.float32), np.repeat(magnitude[..., None], len(tes), axis=-1).astype(np.float32)


def test_noise_free_echoes_give_the_field_exactly_across_wraps():
    """A field whose phase wraps many times at the last echo and a sloped phase offset at TE = 0:
    the fit returns the field itself (the offset is estimated and removed, wraps resolved)."""
    shape, vox = (40, 44, 36), (1.5, 1.5, 2.0)
    x, y, z = grid_mm(shape, vox)
    brain = ball(shape, vox, (0, 0, 0), 24.0) > 0.5
    field = (0.6 * x / 30 + 0.4 * (y / 30) ** 2 - 0.3 * z / 30).astype(np.float32)  # ppm: up to ~10 rad at 16 ms
    offset = 0.9 + 0.02 * x - 0.01 * z
    phase, mag = _signal(field, offset, np.ones(shape))
    assert np.ptp(SCALE * field[brain] * TES[-1]) > 4 * np.pi  # really wrapped
    out, sens, single = combine_echoes(phase, mag, TES, 3.0, vox, mask=brain)
    assert_allclose(out[brain], field[brain], atol=2e-4)
    assert not single[brain].any()
    assert_allclose(sens[brain], SCALE * np.sqrt(sum(t * t for t in TES)), rtol=1e-5)


def test_a_voxel_whose_phase_is_not_linear_in_te_falls_back_to_the_first_echo():
    shape, vox = (24, 24, 20), (2.0, 2.0, 2.0)
    brain = ball(shape, vox, (0, 0, 0), 16.0) > 0.5
    field = np.full(shape, 0.05, np.float32)
    phase, mag = _signal(field, np.zeros(shape), np.ones(shape))
    phase[12, 12, 10, 2] += 2.0  # two compartments dephasing next to air: not a straight line
    out, _, single = combine_echoes(phase, mag, TES, 3.0, vox, mask=brain)
    assert single[12, 12, 10] and single.sum() == 1
    assert abs(out[12, 12, 10] - 0.05) < 5e-3


def test_more_echoes_of_the_same_head_lower_the_local_field_error():
    """Phantom, 4 echoes from the same truth with independent noise: V-SHARP's local field from the
    combined field beats the first echo alone and the last echo alone (anisotropic voxels). Where
    noise dominates, the weighted fit's error is the last echo's times TE_max / sqrt(sum TE^2) = 0.73
    for these echo times; V-SHARP's edge error, common to both, takes a little of that gain."""
    from pedq_deploy.phantom import make_subject
    from pedq_deploy.physics import phase_to_ppm
    from pedq_deploy.preprocess import quality_unwrap

    tes = (5e-3, 10e-3, 15e-3, 20e-3)
    s = make_subject(seed=5, age="infant", shape=(112, 112, 44), voxel_size=(1.4, 1.4, 3.0), tilt_deg=15.0, echo_time=tes, snr=30.0)
    v, brain = s.voxel_size, s.brain_mask

    def error(field):
        local, eroded = vsharp(field, brain, v)
        a = local[eroded] - local[eroded].mean()
        b = s.local_field[eroded] - s.local_field[eroded].mean()
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    single = [error(phase_to_ppm(quality_unwrap(s.phase[..., e], mask=brain, magnitude=s.magnitude[..., e]), tes[e], 3.0)) for e in (0, 3)]
    combined = error(combine_echoes(s.phase, s.magnitude, tes, 3.0, v, mask=brain)[0])
    assert combined < 0.8 * min(single), (combined, single)


@pytest.mark.parametrize(
    "tes,shape,msg",
    [
        ((4e-3, 8e-3), (8, 8, 8, 3), "3 echoes but 2 echo times"),
        ((8e-3, 4e-3, 9e-3), (8, 8, 8, 3), "increase"),
        ((4.0, 8.0, 12.0), (8, 8, 8, 3), "seconds"),
        ((4e-3,), (8, 8, 8), "4D"),
    ],
)
def test_bad_echo_input_is_refused(tes, shape, msg):
    a = np.zeros(shape, np.float32)
    with pytest.raises(InputError, match=msg):
        combine_echoes(a, a + 1, tes, 3.0, (1, 1, 1))
