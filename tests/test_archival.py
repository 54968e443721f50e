"""archival.finish: the one sequence every entry point runs on an output (encode, metadata, sign last, hash)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from colorize_core import archival, fixity, imageio, provenance
from tests import c2pacerts, iccfixtures, metafixtures as mf


@pytest.fixture(scope="module")
def ca():
    return c2pacerts.root_ca()


@pytest.fixture(scope="module")
def signer(ca):
    pair = c2pacerts.leaf(ca)
    return provenance.LocalPemSigner(pair.cert_pem + ca.cert_pem, pair.key_pem)


def test_finish_signs_last_and_hashes_what_it_returns(ca, signer):
    source = mf.archive_jpeg()
    decoded = imageio.decode_image(source)
    record = archival.derivation("scans/042.jpg", source, "effnet_unet", "b" * 64, "JPEG")
    assert record.source_sha256 == fixity.sha256_hex(source)
    out = archival.finish(decoded.rgb.astype(np.uint16) * 257, "tiff", record, source=source, source_format="JPEG",
                          colour=decoded.colour, signer=signer)
    assert out.output_sha256 == fixity.sha256_hex(out.data) and out.output_bytes == len(out.data)
    assert out.source_sha256 == record.source_sha256 and out.metadata is None
    assert provenance.read_manifest(out.data, "tiff", ca.cert_pem)[0] == "Trusted"
    assert Image.open(io.BytesIO(out.data)).getexif().get(0x013B) == mf.ARTIST


def test_finish_reports_every_dropped_block_in_one_column():
    broken = iccfixtures.adobe_rgb()[:300]  # a truncated profile
    source = mf.archive_jpeg(xmp=b"<not xml", profile=broken)
    decoded = imageio.decode_image(source)
    record = archival.derivation("scans/042.jpg", source, "effnet_unet", "b" * 64, "JPEG")
    out = archival.finish(decoded.rgb, "png", record, source=source, colour=decoded.colour)
    parts = out.metadata.split("; ")
    assert [p.split(":", 1)[0] for p in parts] == ["xmp", "iptc", "icc"], parts


def test_visible_label_only_on_access_copies():
    source = mf.archive_jpeg()
    rgb = np.full((300, 400, 3), 90, np.uint8)
    record = archival.derivation("scans/042.jpg", source, "effnet_unet", "b" * 64)
    plain = archival.finish(rgb, "jpeg", record, source=source)
    stamped = archival.finish(rgb, "jpeg", record, source=source, visible_label=True)
    a, b = (imageio.decode_image(x.data).rgb.astype(int) for x in (plain, stamped))
    assert np.abs(a - b).max() > 100
    for fmt, arr in (("tiff", rgb), ("png", rgb.astype(np.uint16) * 257)):
        assert archival.is_master(fmt, 16 if arr.dtype == np.uint16 else 8)
        with pytest.raises(ValueError, match="never gets the visible label"):
            archival.finish(arr, fmt, record, source=source, visible_label=True)
    assert not archival.is_master("png", 8)
