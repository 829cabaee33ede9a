"""pedq-serve: a client written from the MRD protocol (raw struct framing, not the server's code) on loopback."""

import socket
import struct
import threading

import numpy as np
import pytest

ismrmrd = pytest.importorskip("ismrmrd")
import ismrmrd.xsd as xsd  # noqa: E402

from pedq_deploy.errors import InputError  # noqa: E402
from pedq_deploy.mrd.geometry import assemble  # noqa: E402
from pedq_deploy.mrd.server import QSM_SCALE_PPB, MrdServer, parse_header  # noqa: E402
from pedq_deploy.phantom import make_subject  # noqa: E402
from pedq_deploy.runtime import PipelineConfig, run_case  # noqa: E402

LPS = np.diag([-1.0, -1.0, 1.0])


def header_xml(te_ms=4.92, b0=3.0):
    h = xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=int(42.577478e6 * b0)),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(systemFieldStrength_T=b0),
        sequenceParameters=xsd.sequenceParametersType(TE=[te_ms]),
    )
    return xsd.ToXML(h)


def slices_of(volume, affine, voxel_size, image_type, dtype):
    """2D MRD images of a RAS-affine volume: position = centre of each slice's FOV, LPS."""
    a = affine[:3, :3]
    dirs = [LPS @ (a[:, i] / np.linalg.norm(a[:, i])) for i in range(3)]
    nx, ny, nz = volume.shape
    out = []
    for k in range(nz):
        centre_vox = np.array([(nx - 1) / 2, (ny - 1) / 2, k])
        centre = LPS @ (affine[:3, :3] @ centre_vox + affine[:3, 3])
        im = ismrmrd.Image.from_array(np.ascontiguousarray(volume[:, :, k].T[None].astype(dtype)), transpose=False)
        im.field_of_view = (nx * voxel_size[0], ny * voxel_size[1], voxel_size[2])
        im.position = tuple(centre)
        im.read_dir, im.phase_dir, im.slice_dir = (tuple(d) for d in dirs)
        im.image_type = image_type
        im.slice = k
        out.append(im)
    return out


class Client:
    def __init__(self, address):
        self.sock = socket.create_connection(address, timeout=120)

    def send(self, mid, body=b""):
        self.sock.sendall(struct.pack("<H", mid) + body)

    def text(self, mid, s):
        raw = s.encode() + b"\0"
        self.send(mid, struct.pack("<I", len(raw)) + raw)

    def image(self, im):
        head = im.getHead()
        attr = im.attribute_string.encode()
        self.send(1022, bytes(head) + struct.pack("<Q", len(attr)) + attr + np.ascontiguousarray(im.data).tobytes())

    def recv_exactly(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def replies(self):
        texts, images = [], []
        while True:
            (mid,) = struct.unpack("<H", self.recv_exactly(2))
            if mid == 4:
                return texts, images
            if mid == 5:
                (n,) = struct.unpack("<I", self.recv_exactly(4))
                texts.append(self.recv_exactly(n).rstrip(b"\0").decode())
            elif mid == 1022:
                hb = self.recv_exactly(len(bytes(ismrmrd.ImageHeader())))
                (alen,) = struct.unpack("<Q", self.recv_exactly(8))
                attr = self.recv_exactly(alen).rstrip(b"\0").decode()
                im = ismrmrd.Image(hb, attr)
                n = im.data.size * im.data.itemsize
                im.data.ravel()[:] = np.frombuffer(self.recv_exactly(n), dtype=im.data.dtype)
                images.append(im)
            else:
                raise AssertionError(f"unexpected message {mid}")

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MrdServer("127.0.0.1", 0, workers=2, no_models=True, log=lambda m: None)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def scan():
    s = make_subject(seed=7, shape=(64, 64, 24), voxel_size=(3.0, 3.0, 4.0), tilt_deg=15.0, snr=200.0)
    phase_int = np.clip(np.round((s.phase + np.pi) * 2048 / np.pi), 0, 4095)  # the converter's stored 0..4095
    return s, phase_int


def send_scan(client, s, phase_int, config="pedq-tkd", shuffle=True, extra_text=None):
    client.send(1, config.encode().ljust(1024, b"\0"))
    if extra_text:
        client.text(2, extra_text)
    client.text(3, header_xml())
    ims = slices_of(s.magnitude, s.affine, s.voxel_size, 1, np.float32) + slices_of(phase_int, s.affine, s.voxel_size, 2, np.uint16)
    if shuffle:  # the server sorts slices by position, not by arrival
        ims = [ims[i] for i in np.random.default_rng(0).permutation(len(ims))]
    for im in ims:
        client.image(im)
    client.send(4)
    return ims


def test_round_trip_qsm_lies_where_the_input_lay(server, scan):
    s, phase_int = scan
    c = Client(server.address)
    sent = send_scan(c, s, phase_int)
    texts, images = c.replies()
    c.close()
    assert any("tkd" in t and "0..4095" in t for t in texts)
    assert len(images) == s.magnitude.shape[2]
    assert all(im.image_series_index == 99 and im.data.dtype == np.int16 for im in images)
    meta = ismrmrd.Meta.deserialize(images[0].attribute_string)
    assert meta["Units"] == "ppb"
    # geometry: the returned slices carry the input slices' positions and directions
    sent_pos = sorted(tuple(np.round(im.position[:], 4)) for im in sent if im.image_type == 1)
    assert sorted(tuple(np.round(im.position[:], 4)) for im in images) == sent_pos
    back = assemble(images)
    np.testing.assert_allclose(back.affine, s.affine, atol=1e-4)
    # values: what run_case gives on the same arrays, to the ppb rounding
    ref = run_case(
        s.magnitude,
        (phase_int - 2048.0) * np.pi / 2048.0,
        s.affine,
        s.voxel_size,
        PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength, inversion="tkd", masker="classic"),
    )
    np.testing.assert_allclose(back.data / QSM_SCALE_PPB, ref.qsm, atol=0.5 / QSM_SCALE_PPB + 1e-6)


def test_the_default_config_runs_the_servers_settings(scan):
    """pedq-serve --config: the settings file's pipeline is what the 'pedq' config runs, and the
    named configs keep their inversion over it."""
    s, phase_int = scan
    srv = MrdServer("127.0.0.1", 0, workers=1, no_models=True, log=lambda m: None, settings={"inversion": "tv", "tv_iterations": 5})
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        for config, expect in (("pedq", "(tv)"), ("pedq-tkd", "(tkd)")):
            c = Client(srv.address)
            send_scan(c, s, phase_int, config=config)
            texts, images = c.replies()
            c.close()
            assert any(expect in t for t in texts) and images, (config, texts)
    finally:
        srv.shutdown()
    with pytest.raises(InputError, match="unknown inversion"):
        MrdServer("127.0.0.1", 0, no_models=True, log=lambda m: None, settings={"inversion": "magic"})


def test_unknown_config_gets_an_error_text_and_a_clean_close(server, scan):
    c = Client(server.address)
    c.send(1, b"mystery".ljust(1024, b"\0"))
    c.text(3, header_xml())
    texts, images = c.replies()
    c.close()
    assert images == [] and len(texts) == 1 and "unknown config 'mystery'" in texts[0]


def test_garbage_and_disconnects_do_not_take_the_server_down(server, scan):
    s, phase_int = scan
    bad = socket.create_connection(server.address)
    bad.sendall(b"\xff\xff" + b"junk" * 10)  # an unknown message id
    assert bad.recv(2) == struct.pack("<H", 5)  # an error text follows
    bad.close()
    half = socket.create_connection(server.address)
    half.sendall(struct.pack("<HI", 3, 1000) + b"<ismrmrd")  # a header cut short
    half.close()
    huge = Client(server.address)  # claims a 1 TiB image: refused before allocation
    head = ismrmrd.ImageHeader()
    head.matrix_size[:] = (65535, 65535, 65535)
    head.channels, head.data_type = 1, 5
    huge.send(1022, bytes(head) + struct.pack("<Q", 0))
    texts, _ = huge.replies()
    huge.close()
    assert "over the" in texts[0]
    # and a good client is still served, two at once
    results = []

    def one():
        c = Client(server.address)
        send_scan(c, s, phase_int, config="pedq-tkd", shuffle=False)
        results.append(c.replies())
        c.close()

    threads = [threading.Thread(target=one) for _ in range(2)]
    [t.start() for t in threads]
    [t.join(300) for t in threads]
    assert len(results) == 2 and all(len(imgs) == s.magnitude.shape[2] for _, imgs in results)


def test_header_parsing_and_bad_headers():
    te, b0 = parse_header(header_xml(te_ms=20.0, b0=1.5))
    assert te == pytest.approx(0.02) and b0 == pytest.approx(1.5)
    from pedq_deploy.errors import InputError

    with pytest.raises(InputError, match="does not parse"):
        parse_header("<not xml")
    h = xsd.ismrmrdHeader(experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=127740000))
    with pytest.raises(InputError, match="no echo time"):
        parse_header(xsd.ToXML(h))


def test_one_3d_image_gives_the_same_grid_as_its_slices(scan):
    s, _ = scan
    a = s.affine[:3, :3]
    dirs = [LPS @ (a[:, i] / np.linalg.norm(a[:, i])) for i in range(3)]
    n = np.array(s.magnitude.shape)
    centre = LPS @ (a @ ((n - 1) / 2) + s.affine[:3, 3])
    im = ismrmrd.Image.from_array(np.ascontiguousarray(np.transpose(s.magnitude, (2, 1, 0))[None]), transpose=False)
    im.field_of_view = tuple(n * np.array(s.voxel_size))
    im.position = tuple(centre)
    im.read_dir, im.phase_dir, im.slice_dir = (tuple(d) for d in dirs)
    vol3d = assemble([im])
    vol2d = assemble(slices_of(s.magnitude, s.affine, s.voxel_size, 1, np.float32))
    np.testing.assert_allclose(vol3d.affine, s.affine, atol=1e-4)
    np.testing.assert_allclose(vol3d.affine, vol2d.affine, atol=1e-4)
    np.testing.assert_array_equal(vol3d.data, s.magnitude)
    from pedq_deploy.errors import InputError

    sl = slices_of(s.magnitude, s.affine, s.voxel_size, 1, np.float32)
    with pytest.raises(InputError, match="evenly spaced"):
        assemble(sl[:5] + sl[6:])  # a missing slice


def test_pedq_send_round_trip_from_a_nifti_pair(server, tmp_path, capsys):
    import nibabel as nib

    from pedq_deploy.cli.send import main as send_main
    from pedq_deploy.phantom import make_subject, write_subject

    s = make_subject(seed=8, shape=(64, 64, 24), voxel_size=(3.0, 3.0, 4.0), tilt_deg=20.0, snr=200.0)
    write_subject(s, tmp_path / "scan")
    with pytest.raises(SystemExit) as e:
        send_main(
            [
                str(tmp_path / "scan" / "magnitude.nii.gz"),
                str(tmp_path / "scan" / "phase.nii.gz"),
                "-o",
                str(tmp_path / "out"),
                "--port",
                str(server.address[1]),
                "--config",
                "pedq-tkd",
            ]
        )
        raise SystemExit(0)
    assert not e.value.code, capsys.readouterr().err
    img = nib.load(str(tmp_path / "out" / "qsm.nii.gz"))
    np.testing.assert_allclose(img.affine, s.affine, atol=1e-4)
    ref = run_case(
        s.magnitude,
        s.phase,
        s.affine,
        s.voxel_size,
        PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength, inversion="tkd", masker="classic"),
    )
    np.testing.assert_allclose(np.asarray(img.dataobj), ref.qsm, atol=0.5e-3 + 1e-6)
    # a server that is not there: one line, exit 2, nothing written
    with pytest.raises(SystemExit) as e:
        send_main(
            [str(tmp_path / "scan" / "magnitude.nii.gz"), str(tmp_path / "scan" / "phase.nii.gz"), "-o", str(tmp_path / "x"), "--port", "1"]
        )
    assert e.value.code == 2 and "cannot reach pedq-serve" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_mixed_sizes_and_missing_phase_are_refused(server, scan):
    s, phase_int = scan
    c = Client(server.address)
    c.send(1, b"pedq-tkd".ljust(1024, b"\0"))
    c.text(3, header_xml())
    for im in slices_of(s.magnitude, s.affine, s.voxel_size, 1, np.float32):
        c.image(im)
    c.send(4)
    texts, images = c.replies()
    c.close()
    assert images == [] and "both MAGNITUDE and PHASE" in texts[0]
    c = Client(server.address)
    c.send(1, b"pedq-tkd".ljust(1024, b"\0"))
    c.text(3, header_xml())
    mags = slices_of(s.magnitude, s.affine, s.voxel_size, 1, np.float32)
    odd = slices_of(s.magnitude[:32], s.affine, s.voxel_size, 1, np.float32)[0]
    for im in mags[:-1] + [odd] + slices_of(phase_int, s.affine, s.voxel_size, 2, np.uint16):
        c.image(im)
    c.send(4)
    texts, images = c.replies()
    c.close()
    assert images == [] and "differ in matrix size" in texts[0]
