"""The MRD streaming protocol (as python-ismrmrd-server speaks it to Siemens FIRE / OpenRecon).

Every message starts with a little-endian uint16 id. Config file (1): a 1024-byte NUL-padded
name. Config text (2), XML header (3) and text (5): a uint32 length and that many bytes. Close
(4): nothing more. Image (1022): the ISMRMRD image header, a uint64 attribute length, the
attribute XML and the pixel data; acquisition (1008) and waveform (1026) likewise in their ISMRMRD
layouts (read and skipped here). The data structures come from the ``ismrmrd`` package; the
framing is ours. Sizes are checked against limits BEFORE anything is allocated, so a client that
claims a huge message is refused rather than served.
"""

from __future__ import annotations

import ctypes
import socket
import struct

import numpy as np

from ..errors import PedqError

__all__ = [
    "MRD_CONFIG_FILE",
    "MRD_CONFIG_TEXT",
    "MRD_HEADER",
    "MRD_CLOSE",
    "MRD_TEXT",
    "MRD_ACQUISITION",
    "MRD_IMAGE",
    "MRD_WAVEFORM",
    "ProtocolError",
    "ConnectionClosed",
    "Connection",
]

MRD_CONFIG_FILE = 1
MRD_CONFIG_TEXT = 2
MRD_HEADER = 3
MRD_CLOSE = 4
MRD_TEXT = 5
MRD_ACQUISITION = 1008
MRD_IMAGE = 1022
MRD_WAVEFORM = 1026

MAX_TEXT_BYTES = 16 * 2**20
MAX_IMAGE_BYTES = 1024 * 2**20
_DTYPES = {1: np.uint16, 2: np.int16, 3: np.uint32, 4: np.int32, 5: np.float32, 6: np.float64, 7: np.complex64, 8: np.complex128}


class ProtocolError(PedqError):
    """The peer sent something that is not valid MRD."""


class ConnectionClosed(PedqError):
    """The peer closed the connection (mid-message or between messages)."""


class Connection:
    """One MRD connection over a socket: ``read_message()`` and the ``send_*`` writers."""

    def __init__(self, sock: socket.socket, *, max_image_bytes: int = MAX_IMAGE_BYTES):
        self.sock = sock
        self.max_image_bytes = max_image_bytes

    # ---- reading ---------------------------------------------------------------------------
    def read_exactly(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ConnectionClosed("the client closed the connection" + (" mid-message" if got or n else ""))
            got += k
        return bytes(buf)

    def _read_text(self) -> str:
        (n,) = struct.unpack("<I", self.read_exactly(4))
        if n > MAX_TEXT_BYTES:
            raise ProtocolError(f"text message of {n} bytes is over the {MAX_TEXT_BYTES}-byte limit")
        return self.read_exactly(n).split(b"\0", 1)[0].decode("utf-8", errors="replace")

    def _read_image(self):
        import ismrmrd

        head_bytes = self.read_exactly(ctypes.sizeof(ismrmrd.ImageHeader))
        head = ismrmrd.ImageHeader.from_buffer_copy(head_bytes)
        dtype = _DTYPES.get(int(head.data_type))
        if dtype is None:
            raise ProtocolError(f"image data type {head.data_type} is not an ISMRMRD type")
        dims = [int(head.matrix_size[0]), int(head.matrix_size[1]), int(head.matrix_size[2]), int(head.channels)]
        if min(dims) < 1:
            raise ProtocolError(f"image matrix {dims[:3]} with {dims[3]} channels is empty")
        nbytes = int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize
        (attr_len,) = struct.unpack("<Q", self.read_exactly(8))
        if attr_len > MAX_TEXT_BYTES:
            raise ProtocolError(f"image attributes of {attr_len} bytes are over the {MAX_TEXT_BYTES}-byte limit")
        if nbytes > self.max_image_bytes:
            raise ProtocolError(f"image of {nbytes / 2**20:.0f} MiB is over the {self.max_image_bytes / 2**20:.0f} MiB limit")
        attributes = self.read_exactly(attr_len).split(b"\0", 1)[0].decode("utf-8", errors="replace")
        data = np.frombuffer(self.read_exactly(nbytes), dtype=dtype).reshape(dims[3], dims[2], dims[1], dims[0])
        image = ismrmrd.Image(head_bytes, attributes)
        image.data[:] = data
        return image

    def _skip_acquisition(self) -> None:
        import ismrmrd

        head = ismrmrd.AcquisitionHeader.from_buffer_copy(self.read_exactly(ctypes.sizeof(ismrmrd.AcquisitionHeader)))
        n = int(head.trajectory_dimensions) * int(head.number_of_samples) * 4 + int(head.active_channels) * int(head.number_of_samples) * 8
        if n > self.max_image_bytes:
            raise ProtocolError(f"acquisition of {n} bytes is over the limit")
        self.read_exactly(n)

    def _skip_waveform(self) -> None:
        import ismrmrd

        head = ismrmrd.WaveformHeader.from_buffer_copy(self.read_exactly(ctypes.sizeof(ismrmrd.WaveformHeader)))
        n = int(head.channels) * int(head.number_of_samples) * 4
        if n > self.max_image_bytes:
            raise ProtocolError(f"waveform of {n} bytes is over the limit")
        self.read_exactly(n)

    def read_message(self) -> tuple[int, object]:
        """The next message as ``(id, payload)``; acquisitions and waveforms come back as ``None``."""
        (mid,) = struct.unpack("<H", self.read_exactly(2))
        if mid == MRD_CONFIG_FILE:
            return mid, self.read_exactly(1024).split(b"\0", 1)[0].decode("utf-8", errors="replace")
        if mid in (MRD_CONFIG_TEXT, MRD_HEADER, MRD_TEXT):
            return mid, self._read_text()
        if mid == MRD_CLOSE:
            return mid, None
        if mid == MRD_IMAGE:
            return mid, self._read_image()
        if mid == MRD_ACQUISITION:
            self._skip_acquisition()
            return mid, None
        if mid == MRD_WAVEFORM:
            self._skip_waveform()
            return mid, None
        raise ProtocolError(f"unknown MRD message id {mid}")

    # ---- writing ---------------------------------------------------------------------------
    def _send(self, *parts: bytes) -> None:
        self.sock.sendall(b"".join(parts))

    def send_config_file(self, name: str) -> None:
        raw = name.encode("utf-8")[:1023]
        self._send(struct.pack("<H", MRD_CONFIG_FILE), raw + b"\0" * (1024 - len(raw)))

    def _send_text(self, mid: int, text: str) -> None:
        raw = text.encode("utf-8") + b"\0"
        self._send(struct.pack("<HI", mid, len(raw)), raw)

    def send_config_text(self, text: str) -> None:
        self._send_text(MRD_CONFIG_TEXT, text)

    def send_header(self, xml: str) -> None:
        self._send_text(MRD_HEADER, xml)

    def send_text(self, text: str) -> None:
        self._send_text(MRD_TEXT, text)

    def send_image(self, image) -> None:
        parts = [struct.pack("<H", MRD_IMAGE)]
        image.serialize_into(lambda b: parts.append(bytes(b)))
        self._send(*parts)

    def send_close(self) -> None:
        self._send(struct.pack("<H", MRD_CLOSE))
