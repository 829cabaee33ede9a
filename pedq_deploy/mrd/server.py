"""``pedq-serve``: an MRD streaming server that turns a GRE series into QSM while the child is on the table.

One connection = one series: config (file name or text) -> XML header -> magnitude and phase images
-> close. The server assembles the volumes and their geometry, runs the pedq pipeline and sends
back the QSM as a new image series (int16, parts per billion, scale in the image meta) and, when
the client asks (config text ``{"segmentation": true}`` or parameter ``send_segmentation``), the
deep grey matter segmentation, then closes. Models and their sessions are loaded once at start-up
and shared by every connection; at most ``workers`` series are processed at once, later
connections wait in the listen queue.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, PedqError
from ..physics import GAMMA_MHZ_PER_T
from ..preprocess import detect_and_scale_phase
from .geometry import IMTYPE_MAGNITUDE, IMTYPE_PHASE, assemble, volume_to_images
from .protocol import (
    MRD_CLOSE,
    MRD_CONFIG_FILE,
    MRD_CONFIG_TEXT,
    MRD_HEADER,
    MRD_IMAGE,
    MRD_TEXT,
    Connection,
    ConnectionClosed,
    ProtocolError,
)

__all__ = ["PIPELINES", "QSM_SCALE_PPB", "MrdServer", "parse_header"]

# config name -> pipeline overrides; "pedq" is the default pipeline (PedQ-NET when models are loaded)
PIPELINES = {
    "pedq": {"inversion": "auto"},
    "pedq-net": {"inversion": "pedq"},
    "pedq-tkd": {"inversion": "tkd"},
    "pedq-tv": {"inversion": "tv"},
}
QSM_SCALE_PPB = 1000.0  # stored integer = chi (ppm) * 1000
QSM_SERIES_INDEX = 99
SEG_SERIES_INDEX = 98
IMTYPE_MAGNITUDE_OUT = 1


def parse_header(xml: str) -> tuple[float, float]:
    """(echo time in seconds, field strength in tesla) from an ISMRMRD XML header."""
    import ismrmrd.xsd

    try:
        head = ismrmrd.xsd.CreateFromDocument(xml)
    except Exception as exc:  # the XML parser's own exception types
        raise InputError(f"the MRD XML header does not parse: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    b0 = None
    if head.acquisitionSystemInformation is not None and head.acquisitionSystemInformation.systemFieldStrength_T:
        b0 = float(head.acquisitionSystemInformation.systemFieldStrength_T)
    elif head.experimentalConditions is not None and head.experimentalConditions.H1resonanceFrequency_Hz:
        b0 = float(head.experimentalConditions.H1resonanceFrequency_Hz) / (GAMMA_MHZ_PER_T * 1e6)
    if not b0 or not np.isfinite(b0) or b0 <= 0:
        raise InputError("the MRD header gives no field strength (systemFieldStrength_T or H1resonanceFrequency_Hz)")
    te = list(head.sequenceParameters.TE) if head.sequenceParameters is not None else []
    if not te:
        raise InputError("the MRD header gives no echo time (sequenceParameters/TE, ms)")
    return float(te[0]) * 1e-3, b0


@dataclass
class _Session:
    config: str | None = None
    options: dict = field(default_factory=dict)
    xml: str | None = None
    magnitude: list = field(default_factory=list)
    phase: list = field(default_factory=list)


class MrdServer:
    """A listening socket, shared models, a bounded pool of workers (one series each)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9002,
        *,
        workers: int = 1,
        models_dir=None,
        backend: str = "auto",
        no_models: bool = False,
        settings: dict | None = None,
        log=None,
    ):
        from ..config import PipelineConfig
        from ..runtime.networks import PedqModels, find_models

        if workers < 1:
            raise InputError("--workers must be at least 1")
        self.settings = dict(settings or {})  # a --config file's settings; each config name sets the inversion over them
        PipelineConfig(echo_time=0.01, field_strength=3.0, **self.settings).validate()
        self.log = log or (lambda msg: print(f"pedq-serve: {msg}", file=sys.stderr, flush=True))
        found = None if no_models else find_models(models_dir)
        self.models = PedqModels(found, backend=backend) if found is not None else None
        if self.models is not None:  # load every session now, not on the first scan
            for role in self.models.manifests:
                self.models._runner(role)
        self.log(f"models: {found if self.models is not None else 'none (pedq falls back to TKD)'}")
        self.workers = workers
        self._slots = threading.BoundedSemaphore(workers)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pedq-serve")
        self._stop = threading.Event()
        self.sock = socket.create_server((host, port), backlog=64)
        self.address = self.sock.getsockname()[:2]
        self.served = 0

    # ---- lifecycle ---------------------------------------------------------------------------
    def serve_forever(self) -> None:
        self.log(f"listening on {self.address[0]}:{self.address[1]} with {self.workers} worker(s)")
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=0.2):
                continue
            try:
                conn, peer = self.sock.accept()
            except (TimeoutError, OSError):
                self._slots.release()
                continue
            self._pool.submit(self._handle, conn, peer)

    def shutdown(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)
        self.sock.close()
        if self.models is not None:
            self.models.close()

    # ---- one connection ------------------------------------------------------------------------
    def _handle(self, conn: socket.socket, peer) -> None:
        t0 = time.perf_counter()
        mrd = Connection(conn)
        try:
            conn.settimeout(300.0)
            session = self._receive(mrd)
            if session is not None:
                self._process(mrd, session)
                self.log(f"{peer[0]}:{peer[1]} done in {time.perf_counter() - t0:.1f} s ({session.config})")
        except ConnectionClosed as exc:
            self.log(f"{peer[0]}:{peer[1]} {exc}")
        except (ProtocolError, InputError) as exc:
            self.log(f"{peer[0]}:{peer[1]} refused: {exc}")
            self._error(mrd, str(exc))
        except PedqError as exc:
            self.log(f"{peer[0]}:{peer[1]} failed: {exc}")
            self._error(mrd, str(exc))
        except (TimeoutError, OSError) as exc:
            self.log(f"{peer[0]}:{peer[1]} connection error: {exc}")
        except Exception as exc:  # a bug must not take the server down: report it and go on
            self.log(f"{peer[0]}:{peer[1]} internal error: {type(exc).__name__}: {exc}")
            self._error(mrd, f"internal error: {type(exc).__name__}")
        finally:
            self.served += 1
            try:
                conn.close()
            finally:
                self._slots.release()

    def _error(self, mrd: Connection, message: str) -> None:
        try:
            mrd.send_text(f"pedq-serve error: {message}")
            mrd.send_close()
        except OSError:
            pass

    def _receive(self, mrd: Connection) -> _Session | None:
        s = _Session()
        while True:
            mid, payload = mrd.read_message()
            if mid == MRD_CONFIG_FILE:
                s.config = payload.strip()
            elif mid == MRD_CONFIG_TEXT:
                try:
                    opts = json.loads(payload)
                except json.JSONDecodeError:
                    opts = {"config": payload.strip()}
                if not isinstance(opts, dict):
                    raise ProtocolError("config text must be a JSON object or a config name")
                s.options.update(opts)
                s.config = str(opts.get("config", s.config or "pedq"))
            elif mid == MRD_HEADER:
                s.xml = payload
            elif mid == MRD_IMAGE:
                if s.config is None:
                    s.config = "pedq"
                if int(payload.image_type) == IMTYPE_MAGNITUDE:
                    s.magnitude.append(payload)
                elif int(payload.image_type) == IMTYPE_PHASE:
                    s.phase.append(payload)
                else:
                    raise InputError(f"image type {int(payload.image_type)}: send MAGNITUDE (1) and PHASE (2) images")
            elif mid == MRD_TEXT:
                continue
            elif mid == MRD_CLOSE:
                break
            # acquisitions and waveforms are read and ignored
            if s.config is not None and s.config not in PIPELINES:
                raise InputError(f"unknown config {s.config!r} (known: {', '.join(PIPELINES)})")
        if not s.magnitude and not s.phase:
            raise InputError("the client closed without sending images")
        return s

    def _process(self, mrd: Connection, s: _Session) -> None:
        from ..config import PipelineConfig, resolve_inversion
        from ..runtime.pipeline import run_case

        if s.xml is None:
            raise InputError("no MRD XML header was sent (echo time and field strength come from it)")
        echo_time, b0 = parse_header(s.xml)
        # the first echo (contrast 0) of each type
        pick = lambda ims: [im for im in ims if int(im.contrast) == min(int(i.contrast) for i in ims)]  # noqa: E731
        if not s.magnitude or not s.phase:
            raise InputError("both MAGNITUDE and PHASE images are needed")
        mag, pha = assemble(pick(s.magnitude)), assemble(pick(s.phase))
        if mag.data.shape != pha.data.shape or not np.allclose(mag.affine, pha.affine, atol=1e-3):
            raise InputError("magnitude and phase images do not share one grid")
        phase_rad, fmt = detect_and_scale_phase(pha.data)
        settings = {**self.settings, **PIPELINES[s.config]}
        if s.config == "pedq" and "inversion" in self.settings:  # the default pipeline is the --config file's
            settings["inversion"] = self.settings["inversion"]
        inversion = resolve_inversion(settings["inversion"], self.models)
        if inversion == "pedq" and self.models is None:
            raise InputError(f"config {s.config!r} needs the PedQ-NET models; the server has none")
        cfg = PipelineConfig(echo_time=echo_time, field_strength=b0, **{**settings, "inversion": inversion})
        cfg.validate()
        res = run_case(mag.data, phase_rad, mag.affine, mag.voxel_size, cfg, models=self.models)
        mrd.send_text(f"pedq-serve: {s.config} ({inversion}); {fmt}; TE {echo_time * 1e3:.2f} ms, B0 {b0:.2f} T")
        for im in volume_to_images(
            res.qsm,
            mag,
            image_type=IMTYPE_MAGNITUDE_OUT,
            series_index=QSM_SERIES_INDEX,
            scale=QSM_SCALE_PPB,
            meta={
                "DataRole": "Quantitative",
                "Units": "ppb",
                "ScaleFactorPpmPerUnit": "0.001",
                "SeriesDescriptionAdditional": "PEDQ_QSM",
                "ImageProcessingHistory": "PEDQ",
            },
        ):
            mrd.send_image(im)
        want_seg = bool(s.options.get("segmentation") or s.options.get("send_segmentation"))
        if want_seg and res.segmentation is not None:
            for im in volume_to_images(
                res.segmentation.astype(np.float32),
                mag,
                image_type=IMTYPE_MAGNITUDE_OUT,
                series_index=SEG_SERIES_INDEX,
                scale=1.0,
                meta={"DataRole": "Segmentation", "Units": "FreeSurfer label", "SeriesDescriptionAdditional": "PEDQ_DGM_SEG"},
            ):
                mrd.send_image(im)
        elif want_seg:
            mrd.send_text("pedq-serve: no segmentation model loaded; segmentation not sent")
        mrd.send_close()
