"""The client side of the MRD protocol: a volume pair -> MRD slices -> pedq-serve -> QSM volume."""

from __future__ import annotations

import socket

import numpy as np

from ..errors import InputError, PedqError
from ..io.orientation import LPS_TO_RAS as LPS
from ..physics import GAMMA_MHZ_PER_T
from .geometry import IMTYPE_MAGNITUDE, IMTYPE_PHASE, assemble
from .protocol import MRD_CLOSE, MRD_IMAGE, MRD_TEXT, Connection, ConnectionClosed

__all__ = ["volume_to_slices", "header_xml", "send_series"]


def header_xml(echo_time: float, field_strength: float) -> str:
    """A minimal ISMRMRD XML header: field strength and TE (ms)."""
    import ismrmrd.xsd as xsd

    h = xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=int(GAMMA_MHZ_PER_T * 1e6 * field_strength)),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(systemFieldStrength_T=float(field_strength)),
        sequenceParameters=xsd.sequenceParametersType(TE=[float(echo_time) * 1e3]),
    )
    return xsd.ToXML(h)


def volume_to_slices(volume: np.ndarray, affine: np.ndarray, image_type: int, dtype=np.float32) -> list:
    """2D MRD images of a RAS-affine volume; ``position`` = the centre of each slice's FOV (LPS)."""
    import ismrmrd

    a = affine[:3, :3]
    spacing = np.linalg.norm(a, axis=0)
    dirs = [LPS @ (a[:, i] / spacing[i]) for i in range(3)]
    nx, ny, nz = volume.shape
    out = []
    for k in range(nz):
        centre = LPS @ (a @ np.array([(nx - 1) / 2, (ny - 1) / 2, k]) + affine[:3, 3])
        im = ismrmrd.Image.from_array(np.ascontiguousarray(volume[:, :, k].T[None].astype(dtype)), transpose=False)
        im.field_of_view = (float(nx * spacing[0]), float(ny * spacing[1]), float(spacing[2]))
        im.position = tuple(float(x) for x in centre)
        im.read_dir, im.phase_dir, im.slice_dir = (tuple(float(x) for x in d) for d in dirs)
        im.image_type = image_type
        im.slice = k
        im.image_index = k + 1
        out.append(im)
    return out


def send_series(
    host: str,
    port: int,
    magnitude: np.ndarray,
    phase_rad: np.ndarray,
    affine: np.ndarray,
    echo_time: float,
    field_strength: float,
    *,
    config: str = "pedq",
    segmentation: bool = False,
    timeout: float = 600.0,
):
    """Send one GRE series; returns (QSM in ppm on the input grid, segmentation or None, server texts)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise InputError(f"cannot reach pedq-serve at {host}:{port}: {exc.strerror or exc}") from None
    mrd = Connection(sock)
    try:
        mrd.send_config_file(config)
        if segmentation:
            mrd.send_config_text(f'{{"config": "{config}", "segmentation": true}}')
        mrd.send_header(header_xml(echo_time, field_strength))
        for im in volume_to_slices(magnitude, affine, IMTYPE_MAGNITUDE) + volume_to_slices(phase_rad, affine, IMTYPE_PHASE):
            mrd.send_image(im)
        mrd.send_close()
        texts, qsm, seg = [], [], []
        while True:
            mid, payload = mrd.read_message()
            if mid == MRD_CLOSE:
                break
            if mid == MRD_TEXT:
                texts.append(payload)
            elif mid == MRD_IMAGE:
                (qsm if int(payload.image_series_index) == 99 else seg).append(payload)
    except ConnectionClosed:
        raise PedqError("pedq-serve closed the connection before sending a result") from None
    finally:
        sock.close()
    errors = [t for t in texts if t.startswith("pedq-serve error")]
    if errors:
        raise InputError(errors[0])
    if not qsm:
        raise PedqError("pedq-serve sent no QSM images" + (f" ({texts[-1]})" if texts else ""))
    vol = assemble(qsm)
    if vol.data.shape != magnitude.shape or not np.allclose(vol.affine, affine, atol=1e-3):
        raise PedqError("the QSM images came back on another grid than the series sent")
    labels = assemble(seg).data.astype(np.uint8) if seg else None
    from .server import QSM_SCALE_PPB

    return vol.data / QSM_SCALE_PPB, labels, texts
