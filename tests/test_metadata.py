"""The source's metadata carried into every output format, our provenance XMP merged in, and bad blocks dropped
with a reason without costing the image. Outputs are read back with Pillow and tifffile, not with our reader."""

from __future__ import annotations

import io
import struct
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps, IptcImagePlugin

from colorize_core import icc, imageio, metadata
from colorize_core.metadata import DIGITAL_SOURCE_TYPE, Derivation
from tests import metafixtures as mf

NS = metadata.NS
RECORD = Derivation(source_id="s3://archive/scans/1931/042.jpg", source_sha256="a" * 64, model="effnet_unet",
                    weights_sha256="b" * 64, when="2026-05-04T10:00:00Z", source_format="JPEG")

# output format, depth
OUTPUTS = [("jpeg", 8), ("png", 8), ("png", 16), ("webp", 8), ("tiff", 8), ("tiff", 16)]


def _output(source: bytes, fmt: str, depth: int) -> metadata.Written:
    decoded = imageio.decode_image(source)
    rgb = decoded.rgb.astype(np.uint16) * 257 if decoded.rgb.dtype == np.uint8 else decoded.rgb
    rgb = rgb if depth == 16 else (rgb // 257).astype(np.uint8)
    return metadata.write(imageio.encode_image(rgb, fmt), fmt, metadata.read_metadata(source), RECORD)


def _xmp_of(im: Image.Image, data: bytes) -> ET.Element:
    packet = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if packet is None and im.format == "TIFF":
        packet = tifffile.TiffFile(io.BytesIO(data)).pages[0].tags[700].value
    packet = packet.encode("utf-8") if isinstance(packet, str) else bytes(packet)
    return ET.fromstring(packet.rstrip(b"\0"))


def _prop(root: ET.Element, prefix: str, name: str) -> list[str]:
    """Every value of a property anywhere in the packet: attribute form on any element, or element form
    (simple, or the rdf:li items of an Alt/Seq/Bag)."""
    q = f"{{{NS[prefix]}}}{name}"
    out = [el.attrib[q] for el in root.iter() if q in el.attrib]
    for el in root.iter(q):
        items = list(el.iter(f"{{{NS['rdf']}}}li"))
        out += [li.text for li in items] if items else [el.text]
    return out


@pytest.fixture(scope="module")
def source() -> bytes:
    return mf.archive_jpeg()


@pytest.mark.parametrize("fmt, depth", OUTPUTS)
def test_every_format_keeps_exif_xmp_dpi_icc_and_adds_provenance(source, fmt, depth):
    written = _output(source, fmt, depth)
    data = written.data
    im = Image.open(io.BytesIO(data))
    im.load()
    exif = im.getexif()
    assert (exif.get(0x013B), exif.get(0x8298), exif.get(0x010E)) == (mf.ARTIST, mf.COPYRIGHT, mf.DESCRIPTION)
    assert exif.get(0x0112) == 1  # the pixels are already upright
    sub = exif.get_ifd(0x8769)
    assert sub.get(0x9003) == mf.TAKEN and sub.get(0x927C) == mf.MAKERNOTE
    assert exif.get_ifd(0x8825).get(1) == "N"
    assert mf.THUMBNAIL not in data and not exif.get_ifd(0x1)  # IFD1 and its bytes are gone
    profile = icc.parse_profile(im.info["icc_profile"])
    assert profile.is_srgb
    root = _xmp_of(im, data)
    assert _prop(root, "dc", "identifier") == [mf.IDENTIFIER] and _prop(root, "dc", "title") == [mf.TITLE]
    assert _prop(root, "Iptc4xmpExt", "DigitalSourceType") == [DIGITAL_SOURCE_TYPE]
    assert _prop(root, "Iptc4xmpExt", "AISystemUsed") == ["effnet_unet"]
    assert _prop(root, "Iptc4xmpExt", "AISystemVersionUsed") == ["sha256:" + "b" * 64]
    assert _prop(root, "colorize", "sourceSHA256") == ["a" * 64]
    assert _prop(root, "colorize", "sourceIdentifier") == [RECORD.source_id]
    if fmt == "webp":  # no resolution field in WebP: the XMP carries it
        assert _prop(root, "tiff", "XResolution") == ["600/1"]
    else:
        assert tuple(round(v) for v in im.info["dpi"]) == (600, 600)
    iptc = IptcImagePlugin.getiptcinfo(im) if fmt in ("jpeg", "tiff") else None
    if fmt in ("jpeg", "tiff"):
        assert iptc[(2, 120)] == mf.CAPTION.encode() and written.dropped == ()
    else:
        assert any(d.startswith("iptc:") for d in written.dropped)
        assert _prop(root, "dc", "description") == [mf.CAPTION]  # IIM mapped into XMP where it cannot stay
    if depth == 16:
        assert imageio.decode_image(data).rgb.dtype == np.uint16


def test_our_reader_reads_back_what_we_wrote(source):
    for fmt, depth in OUTPUTS:
        again = metadata.read_metadata(_output(source, fmt, depth).data)
        assert again.dropped == () and again.exif is not None and again.xmp is not None
        assert tuple(round(v) for v in again.dpi) == (600, 600), fmt
        assert (again.iptc is not None) == (fmt in ("jpeg", "tiff")), fmt


def test_tiff_output_holds_exif_as_tiff_tags_and_sub_ifds(source):
    data = _output(source, "tiff", 16).data
    page = tifffile.TiffFile(io.BytesIO(data)).pages[0]
    tags = {t.code: t.value for t in page.tags}
    assert tags[315] == mf.ARTIST and tags[33432] == mf.COPYRIGHT and tags[274] == 1
    assert tags[34665]["DateTimeOriginal"] == mf.TAKEN and tags[34853]["GPSLatitudeRef"] == "N"
    assert page.compression == 8 and page.dtype == np.uint16


def test_a_tiff_source_carries_over_into_jpeg(source):
    """TIFF as source: IFD0's descriptive tags and the EXIF IFD become the JPEG's EXIF; XMP, IPTC, dpi too."""
    tiff = _output(source, "tiff", 16).data
    out = metadata.write(imageio.encode_image(imageio.decode_image(tiff).rgb.astype(np.uint8), "jpeg"), "jpeg",
                         metadata.read_metadata(tiff), RECORD).data
    im = Image.open(io.BytesIO(out))
    exif = im.getexif()
    assert exif.get(0x013B) == mf.ARTIST and exif.get_ifd(0x8769).get(0x9003) == mf.TAKEN
    assert IptcImagePlugin.getiptcinfo(im)[(2, 5)] == mf.TITLE.encode()
    assert tuple(round(v) for v in im.info["dpi"]) == (600, 600)
    root = _xmp_of(im, out)
    assert _prop(root, "dc", "identifier") == [mf.IDENTIFIER]
    assert len(_prop(root, "stEvt", "action")) == 3  # created (scanner), derived (first run), derived (second)


def test_little_endian_exif_into_tiff():
    out = _output(mf.archive_jpeg(exif=mf.exif_block(order="II")), "tiff", 8).data
    exif = Image.open(io.BytesIO(out)).getexif()
    assert exif.get(0x013B) == mf.ARTIST and exif.get_ifd(0x8769).get(0x927C) == mf.MAKERNOTE


def test_png_source_metadata_is_read():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", mf.XMP.decode("utf-8"), zip=True)
    buf = io.BytesIO()
    Image.fromarray(mf.gray()).save(buf, "PNG", pnginfo=info, exif=b"Exif\0\0" + mf.exif_block(), dpi=(300, 300))
    meta = metadata.read_metadata(buf.getvalue())
    assert meta.dropped == () and tuple(round(v) for v in meta.dpi) == (300, 300)
    assert b"INV-1931-042" in meta.xmp and mf.THUMBNAIL not in meta.exif


def test_decoded_orientation_and_written_orientation_agree(source):
    """The decode turns the pixels upright (Orientation 6); the output says 1, so no viewer turns them again."""
    assert Image.open(io.BytesIO(source)).size == (64, 48)  # stored sideways
    upright = imageio.decode_image(source).rgb
    out = _output(source, "jpeg", 8).data
    viewer = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(out))))  # what a viewer shows
    assert upright.shape[:2] == viewer.shape[:2] == (64, 48)


def test_thumbnail_bytes_are_removed_from_the_block_itself():
    block = mf.exif_block()
    cleaned = metadata.read_metadata(mf.archive_jpeg(exif=block)).exif
    assert mf.THUMBNAIL in block and mf.THUMBNAIL not in cleaned and len(cleaned) < len(block)
    assert mf.MAKERNOTE in cleaned  # every other byte as it was


# --------------------------------------------------------------------------- our XMP


def test_xmp_merge_keeps_the_sources_properties_and_replaces_only_what_is_false(source):
    packet = metadata.build_xmp(mf.XMP, RECORD)
    root = ET.fromstring(packet)
    assert f'xmlns:cat="{mf.CUSTOM_NS}"'.encode() in packet  # the source's own prefix survives
    assert _prop(root, "dc", "identifier") == [mf.IDENTIFIER]
    assert root.find(f".//{{{mf.CUSTOM_NS}}}shelfmark") is None  # attribute form ...
    assert [d.attrib.get(f"{{{mf.CUSTOM_NS}}}shelfmark") for d in root.iter(f"{{{NS['rdf']}}}Description")
            if f"{{{mf.CUSTOM_NS}}}shelfmark" in d.attrib] == ["Box 12 / 7"]  # ... kept as it was
    assert _prop(root, "Iptc4xmpExt", "DigitalSourceType") == [DIGITAL_SOURCE_TYPE]
    assert _prop(root, "colorize", "sourceDigitalSourceType") == [
        "http://cv.iptc.org/newscodes/digitalsourcetype/negativeFilm"]
    assert _prop(root, "xmpMM", "DocumentID") == ["xmp.did:source-doc"]
    (instance,) = _prop(root, "xmpMM", "InstanceID")
    assert instance.startswith("xmp.iid:") and instance != "xmp.iid:source-instance"
    assert _prop(root, "stRef", "instanceID") == ["xmp.iid:source-instance"]
    assert _prop(root, "stEvt", "action") == ["created", "derived"]  # appended to the source's history
    assert all(f"{{{NS['rdf']}}}about" in d.attrib for d in root.iter(f"{{{NS['rdf']}}}Description"))


def test_xmp_alone_when_the_source_has_none():
    root = ET.fromstring(metadata.build_xmp(None, RECORD))
    assert root.tag == f"{{{NS['x']}}}xmpmeta"
    assert _prop(root, "Iptc4xmpExt", "DigitalSourceType") == [DIGITAL_SOURCE_TYPE]
    assert _prop(root, "colorize", "weightsSHA256") == ["b" * 64]


def test_rewriting_an_output_does_not_stack_our_properties(source):
    once = metadata.build_xmp(mf.XMP, RECORD)
    twice = ET.fromstring(metadata.build_xmp(once, RECORD))
    assert len(_prop(twice, "Iptc4xmpExt", "DigitalSourceType")) == 1
    assert len(_prop(twice, "colorize", "sourceSHA256")) == 1


# --------------------------------------------------------------------------- bad blocks


def _with_app1_exif(block: bytes) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mf.gray()).save(buf, "JPEG")
    seg = b"Exif\0\0" + block
    data = buf.getvalue()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(seg) + 2) + seg + data[2:]


@pytest.mark.parametrize("name, data, prefix", [
    ("exif offset past the block", _with_app1_exif(b"MM\0*\x00\x00\xff\xff" + b"\0" * 20), "exif:"),
    ("exif not TIFF", _with_app1_exif(b"garbage garbage garbage"), "exif:"),
    ("xmp not XML", mf.archive_jpeg(xmp=b"<x:xmpmeta><rdf:RDF>unclosed"), "xmp:"),
    ("xmp with an entity", mf.archive_jpeg(xmp=b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'), "xmp:"),
    ("iptc garbage", mf.archive_jpeg(iptc=b"\x00\x01not iim"), "iptc:"),
])
def test_bad_blocks_are_dropped_with_a_reason_and_the_image_still_comes(name, data, prefix):
    meta = metadata.read_metadata(data)
    assert any(d.startswith(prefix) for d in meta.dropped), meta.dropped
    assert all("\n" not in d and len(d) < 200 for d in meta.dropped)
    decoded = imageio.decode_image(data)
    out = metadata.write(imageio.encode_image(decoded.rgb if decoded.rgb.dtype == np.uint8 else
                                              (decoded.rgb // 257).astype(np.uint8), "jpeg"), "jpeg", meta, RECORD)
    root = _xmp_of(Image.open(io.BytesIO(out.data)), out.data)
    assert _prop(root, "Iptc4xmpExt", "DigitalSourceType") == [DIGITAL_SOURCE_TYPE]


def test_truncated_container_keeps_what_was_read():
    data = mf.archive_jpeg()
    meta = metadata.read_metadata(data[:300])
    assert any(d.startswith("metadata:") for d in meta.dropped)


def test_exif_too_large_for_jpeg_is_dropped_with_a_reason_but_kept_in_tiff():
    ex = Image.Exif()
    ex[0x010E] = "x" * 70000
    big = metadata.SourceMetadata(exif=ex.tobytes()[6:])
    rgb = np.zeros((8, 8, 3), np.uint8)
    jpeg = metadata.write(imageio.encode_image(rgb, "jpeg"), "jpeg", big, RECORD)
    assert any("exif:" in d and "APP1" in d for d in jpeg.dropped)
    tiff = metadata.write(imageio.encode_image(rgb, "tiff"), "tiff", big, RECORD)
    assert tiff.dropped == () and Image.open(io.BytesIO(tiff.data)).getexif().get(0x010E) == "x" * 70000


def test_summarize_joins_reasons_once():
    assert metadata.summarize((), None) is None
    assert metadata.summarize(("exif: a",), ("exif: a", "iptc: b")) == "exif: a; iptc: b"


def test_no_bytes_make_the_reader_raise():
    """Truncations and bit flips of a full archive JPEG, the hostile corpus and nested-IFD bombs: the reader
    always answers (with reasons), and whatever it accepted can be written."""
    from tests.corpus import awkward_corpus, hostile_corpus

    rng = np.random.default_rng(5)
    base = mf.archive_jpeg()
    samples = [base[:n] for n in rng.integers(2, len(base), 40)]
    for _ in range(80):
        b = bytearray(base)
        for pos in rng.integers(2, 1200, 4):  # the metadata segments
            b[pos] ^= int(rng.integers(1, 256))
        samples.append(bytes(b))
    samples += [d for d, _ in awkward_corpus().values()] + [d for d, _ in hostile_corpus().values()]
    deep = bytearray(b"MM\0*\0\0\0\x08")
    for i in range(200):  # IFD i points at IFD i+1 through an EXIF-IFD tag
        at = len(deep)
        deep += struct.pack(">HHHII", 1, 34665, 4, 1, at + 18) + struct.pack(">I", 0)
    samples.append(_with_app1_exif(bytes(deep)))
    rgb = np.zeros((8, 8, 3), np.uint8)
    for data in samples:
        meta = metadata.read_metadata(data)
        for fmt in ("jpeg", "tiff"):
            metadata.write(imageio.encode_image(rgb, fmt), fmt, meta, RECORD)
    assert any("nested too deep" in d for d in metadata.read_metadata(samples[-1]).dropped)
