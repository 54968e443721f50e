"""C2PA Content Credentials: signed outputs read back with c2pa-python's Reader trusting a CA made in the test,
the start-up check's one line for each certificate C2PA refuses, the signer interface, the visible label."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import tifffile
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from PIL import Image

from colorize_core import imageio, metadata, provenance, storage
from colorize_core.errors import UserError
from colorize_core.metadata import DIGITAL_SOURCE_TYPE, Derivation
from tests import c2pacerts, metafixtures as mf

RECORD = Derivation(source_id="s3://archive/scans/1931/042.jpg", source_sha256="a" * 64, model="effnet_unet",
                    weights_sha256="b" * 64, when="2026-05-04T10:00:00Z", source_format="JPEG")
OUTPUTS = [("jpeg", 8), ("png", 8), ("png", 16), ("webp", 8), ("tiff", 8), ("tiff", 16)]


@pytest.fixture(scope="module")
def ca() -> c2pacerts.Pair:
    return c2pacerts.root_ca()


@pytest.fixture(scope="module")
def signer(ca) -> provenance.LocalPemSigner:
    pair = c2pacerts.leaf(ca)
    return provenance.LocalPemSigner(pair.cert_pem + ca.cert_pem, pair.key_pem, description="leaf.pem")


@pytest.fixture(scope="module")
def source() -> bytes:
    return mf.archive_jpeg()


def _finished(source: bytes, fmt: str, depth: int) -> tuple[bytes, np.ndarray]:
    """An output with pixels and metadata written: what signing is given."""
    rgb = imageio.decode_image(source).rgb
    rgb = rgb.astype(np.uint16) * 257 if depth == 16 else rgb
    return metadata.write(imageio.encode_image(rgb, fmt), fmt, metadata.read_metadata(source), RECORD).data, rgb


def _pixel_byte(data: bytes, fmt: str) -> int:
    """An offset inside the image data of a file (not its metadata or manifest)."""
    if fmt == "jpeg":
        return data.index(b"\xff\xda") + 40
    if fmt == "png":
        return data.index(b"IDAT") + 40
    if fmt == "webp":
        return data.index(b"VP8") + 40
    return int(tifffile.TiffFile(io.BytesIO(data)).pages[0].dataoffsets[0]) + 5


@pytest.mark.parametrize("fmt, depth", OUTPUTS)
def test_signed_output_is_trusted_and_says_what_made_it(ca, signer, source, fmt, depth):
    finished, rgb = _finished(source, fmt, depth)
    signed = provenance.sign_output(finished, fmt, signer, RECORD, source=source, source_format="JPEG")
    state, manifest = provenance.read_manifest(signed, fmt, ca.cert_pem)
    assert state == "Trusted"
    actions = {a["action"]: a for a in manifest["assertions"][0]["data"]["actions"]}
    assert set(actions) == {"c2pa.opened", "c2pa.edited"}
    edited = actions["c2pa.edited"]
    assert edited["digitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert edited["softwareAgent"]["name"] == "colorize"
    ingredients = {i["relationship"]: i for i in manifest["ingredients"]}
    assert ingredients["parentOf"]["title"] == "042.jpg" and ingredients["parentOf"]["format"] == "image/jpeg"
    assert ingredients["inputTo"]["title"] == "effnet_unet"
    assert ingredients["inputTo"]["data_types"] == [{"type": "c2pa.types.model.pytorch"}]
    opened_ref = actions["c2pa.opened"]["parameters"]["ingredients"][0]["url"]
    edited_ref = edited["parameters"]["ingredients"][0]["url"]
    assert opened_ref.endswith(ingredients["parentOf"]["label"]) and edited_ref.endswith(ingredients["inputTo"]["label"])
    (derivation,) = [a["data"] for a in manifest["assertions"] if a["label"] == provenance.ASSERTION_LABEL]
    assert derivation["weights_sha256"] == "b" * 64 and derivation["source_sha256"] == "a" * 64
    assert "thumbnail" not in manifest and all("thumbnail" not in i for i in manifest["ingredients"])
    # signing came last: everything written before it is still there, pixels untouched
    im = Image.open(io.BytesIO(signed))
    assert im.getexif().get(0x013B) == mf.ARTIST
    again = metadata.read_metadata(signed)
    assert again.dropped == () and b"compositeWithTrainedAlgorithmicMedia" in again.xmp
    if fmt in ("png", "tiff"):
        np.testing.assert_array_equal(imageio.decode_image(signed).rgb, rgb)
    assert len(signed) - len(finished) < 40_000  # no thumbnails: the manifest is the chain and the claim


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "tiff"])
def test_one_changed_byte_makes_it_invalid(ca, signer, source, fmt):
    finished, _ = _finished(source, fmt, 8)
    signed = bytearray(provenance.sign_output(finished, fmt, signer, RECORD, source=source, source_format="JPEG"))
    signed[_pixel_byte(bytes(signed), fmt)] ^= 0x01
    state, _ = provenance.read_manifest(bytes(signed), fmt, ca.cert_pem)
    assert state == "Invalid"


def test_without_trusting_the_ca_it_is_only_valid(signer, source):
    finished, _ = _finished(source, "jpeg", 8)
    signed = provenance.sign_output(finished, "jpeg", signer, RECORD)
    assert provenance.read_manifest(signed, "jpeg", None)[0] == "Valid"
    assert provenance.read_manifest(finished, "jpeg", None) == (None, None)  # unsigned: no manifest


def test_source_without_bytes_is_described_by_identifier_and_hash(ca, signer, source):
    finished, _ = _finished(source, "png", 8)
    signed = provenance.sign_output(finished, "png", signer, RECORD, source_format="BMP")
    state, manifest = provenance.read_manifest(signed, "png", ca.cert_pem)
    assert state == "Trusted"
    (parent,) = [i for i in manifest["ingredients"] if i["relationship"] == "parentOf"]
    assert "a" * 64 in parent["description"]


class CallbackSigner:
    """What a KMS/HSM signer looks like: the three members of provenance.Signer, the key elsewhere."""

    algorithm = "es256"

    def __init__(self, pair: c2pacerts.Pair, ca: c2pacerts.Pair):
        self.certificate_chain = pair.cert_pem + ca.cert_pem
        self._remote = pair.key  # stands in for the HSM
        self.calls = 0

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        return self._remote.sign(data, ec.ECDSA(hashes.SHA256()))


def test_a_callback_signer_needs_nothing_else(ca, source):
    kms = CallbackSigner(c2pacerts.leaf(ca), ca)
    assert isinstance(kms, provenance.Signer)
    provenance.check_signer(kms)
    finished, _ = _finished(source, "jpeg", 8)
    signed = provenance.sign_output(finished, "jpeg", kms, RECORD, source=source, source_format="JPEG")
    assert provenance.read_manifest(signed, "jpeg", ca.cert_pem)[0] == "Trusted" and kms.calls >= 2


# --------------------------------------------------------------------------- start-up check


def _refused(ca):
    other_ca = c2pacerts.root_ca()
    self_signed = c2pacerts.make("Self", None)
    no_eku = c2pacerts.leaf(ca, eku=None)
    server = c2pacerts.leaf(ca, eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    expired = c2pacerts.leaf(ca, days=(-30, -1))
    good = c2pacerts.leaf(ca)
    stranger = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return {
        "self-signed": (self_signed.cert_pem, self_signed.key_pem, "is self-signed"),
        "a CA as signer": (other_ca.cert_pem, other_ca.key_pem, "is a CA certificate"),
        "no EKU": (no_eku.cert_pem + ca.cert_pem, no_eku.key_pem, "has no extended key usage"),
        "serverAuth only": (server.cert_pem + ca.cert_pem, server.key_pem, "none of which C2PA accepts"),
        "expired": (expired.cert_pem + ca.cert_pem, expired.key_pem, "expired on"),
        "key that does not match": (good.cert_pem + ca.cert_pem, stranger, "does not match the key"),
    }


def test_good_certificate_passes_the_start_up_check(signer):
    provenance.check_signer(signer)


@pytest.mark.parametrize("kind", ["self-signed", "a CA as signer", "no EKU", "serverAuth only", "expired",
                                  "key that does not match"])
def test_refused_certificate_gives_one_line_at_start_up(ca, kind):
    chain, key, expected = _refused(ca)[kind]
    with pytest.raises(UserError) as err:
        provenance.check_signer(provenance.LocalPemSigner(chain, key, description="cert.pem"))
    msg = str(err.value)
    assert expected in msg and "cert.pem" in msg and "\n" not in msg and len(msg) < 300
    assert key.decode() not in msg and "PRIVATE" not in msg


def test_c2pa_itself_refuses_what_the_certificate_checks_miss(ca):
    """A callback signer's key is invisible to the certificate checks: the test signature catches it."""
    wrong = CallbackSigner(c2pacerts.leaf(ca), ca)
    wrong._remote = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(UserError, match="test signature.*does not verify"):
        provenance.check_signer(wrong)


def test_the_key_never_pickles_or_shows(signer, ca):
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(signer)
    assert "PRIVATE" not in repr(signer) and "BEGIN" not in repr(signer)


def test_load_local_signer_from_files_and_password_from_the_environment(tmp_path, ca, monkeypatch):
    pair = c2pacerts.leaf(ca)
    (tmp_path / "chain.pem").write_bytes(pair.cert_pem + ca.cert_pem)
    (tmp_path / "key.pem").write_bytes(pair.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret")))
    with pytest.raises(UserError, match="encrypted"):
        provenance.load_local_signer(str(tmp_path / "chain.pem"), str(tmp_path / "key.pem"))
    monkeypatch.setenv("TEST_C2PA_PASSWORD", "s3cret")
    s = provenance.load_local_signer(str(tmp_path / "chain.pem"), str(tmp_path / "key.pem"),
                                     password_env="TEST_C2PA_PASSWORD")
    provenance.check_signer(s)
    with pytest.raises(UserError, match="not found"):
        provenance.load_local_signer(str(tmp_path / "missing.pem"), str(tmp_path / "key.pem"))


def test_load_local_signer_from_s3(s3_server, s3_prefix, ca):
    pair = c2pacerts.leaf(ca)
    storage.write_bytes(s3_prefix + "c2pa/chain.pem", pair.cert_pem + ca.cert_pem, s3_server.options)
    storage.write_bytes(s3_prefix + "c2pa/key.pem", pair.key_pem, s3_server.options)
    s = provenance.load_local_signer(s3_prefix + "c2pa/chain.pem", s3_prefix + "c2pa/key.pem", s3_server.options)
    provenance.check_signer(s)
    assert s.description == s3_prefix + "c2pa/chain.pem"


# --------------------------------------------------------------------------- visible label


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_visible_label_marks_a_corner_only(dtype):
    maxv = np.iinfo(dtype).max
    rgb = np.full((600, 800, 3), maxv // 2, dtype)
    out = provenance.stamp_visible_label(rgb)
    assert out.dtype == dtype and out.shape == rgb.shape
    changed = np.any(out != rgb, axis=-1)
    ys, xs = np.nonzero(changed)
    assert ys.min() > 600 * 0.8 and xs.min() > 800 * 0.4  # bottom right
    assert (out == maxv).all(axis=-1).sum() > 100  # white text pixels
    assert 10 <= ys.max() - ys.min() <= 60  # legible, and small
    np.testing.assert_array_equal(rgb, np.full((600, 800, 3), maxv // 2, dtype))  # input untouched


def test_visible_label_skips_images_too_small_to_read_it():
    rgb = np.zeros((8, 8, 3), np.uint8)
    np.testing.assert_array_equal(provenance.stamp_visible_label(rgb), rgb)
