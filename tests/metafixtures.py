"""Sources carrying archive metadata, built with Pillow plus a few bytes spliced by hand (IPTC's APP13, the
EXIF thumbnail IFD that Pillow cannot write), so the library under test is not the one making its inputs."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

from colorize_core import icc

ARTIST, COPYRIGHT, DESCRIPTION, TAKEN = "Ann Artist", "(c) City Archive", "Market day, Main Street", "1931:05:04 10:00:00"
IDENTIFIER, TITLE = "INV-1931-042", "Market day"
MAKERNOTE = b"MAKERNOTE\x00\x01\x02 offsets relative to the block \xff\xfe"
THUMBNAIL = b"\xff\xd8\xff\xdbTHUMBNAIL-OF-THE-UNCROPPED-SCAN\xff\xd9"
CAPTION = "Stalls on Main Street, looking north"
CUSTOM_NS = "http://archive.example/ns/catalogue/1.0/"

XMP = f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"
      xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/" xmlns:cat="{CUSTOM_NS}"
      xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
      xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#"
      xmpMM:DocumentID="xmp.did:source-doc" xmpMM:InstanceID="xmp.iid:source-instance"
      cat:shelfmark="Box 12 / 7"
      Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/negativeFilm">
   <dc:identifier>{IDENTIFIER}</dc:identifier>
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">{TITLE}</rdf:li></rdf:Alt></dc:title>
   <xmpMM:History><rdf:Seq><rdf:li rdf:parseType="Resource"><stEvt:action>created</stEvt:action>
    <stEvt:softwareAgent>ScanSoft 2.1</stEvt:softwareAgent></rdf:li></rdf:Seq></xmpMM:History>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>""".encode("utf-8")


def iim(caption: str = CAPTION) -> bytes:
    def ds(n: int, value: bytes) -> bytes:
        return b"\x1c\x02" + bytes([n]) + struct.pack(">H", len(value)) + value

    return b"\x1c\x01\x5a\x00\x03\x1b%G" + ds(5, TITLE.encode()) + ds(120, caption.encode()) + ds(25, b"market") \
        + ds(25, b"street") + ds(80, ARTIST.encode()) + ds(55, b"19310504")


def exif_block(orientation: int = 6, thumbnail: bool = True, order: str = "MM") -> bytes:
    """TIFF-structured EXIF (no 'Exif\\0\\0'): IFD0 descriptive tags, Exif IFD with a maker note, GPS, and an
    IFD1 pointing at a JPEG thumbnail at the end of the block."""
    ex = Image.Exif()
    ex.endian = "<" if order == "II" else ">"
    ex[0x013B], ex[0x8298], ex[0x010E], ex[0x0112] = ARTIST, COPYRIGHT, DESCRIPTION, orientation
    ex.get_ifd(0x8769)[0x9003] = TAKEN
    ex.get_ifd(0x8769)[0x927C] = MAKERNOTE
    ex.get_ifd(0x8825)[1] = "N"
    ex.get_ifd(0x8825)[2] = (48.0, 51.0, 29.0)
    raw = bytearray(ex.tobytes()[6:])
    if not thumbnail:
        return bytes(raw)
    o = ">" if raw[:2] == b"MM" else "<"
    (ifd0,) = struct.unpack_from(o + "I", raw, 4)
    (n,) = struct.unpack_from(o + "H", raw, ifd0)
    next_at = ifd0 + 2 + 12 * n
    raw += b"\0" * (len(raw) % 2)
    ifd1 = len(raw)
    thumb_at = ifd1 + 2 + 3 * 12 + 4
    raw += struct.pack(o + "H", 3) + struct.pack(o + "HHIHH", 259, 3, 1, 6, 0)
    raw += struct.pack(o + "HHII", 513, 4, 1, thumb_at) + struct.pack(o + "HHII", 514, 4, 1, len(THUMBNAIL))
    raw += struct.pack(o + "I", 0) + THUMBNAIL
    struct.pack_into(o + "I", raw, next_at, ifd1)
    return bytes(raw)


def splice_app13(jpeg: bytes, iim_bytes: bytes) -> bytes:
    res = b"8BIM\x04\x04\0\0" + struct.pack(">I", len(iim_bytes)) + iim_bytes + b"\0" * (len(iim_bytes) % 2)
    payload = b"Photoshop 3.0\0" + res
    return jpeg[:2] + b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def gray(h: int = 48, w: int = 64) -> np.ndarray:
    return ((np.arange(h * w).reshape(h, w) * 7) % 256).astype(np.uint8)


def archive_jpeg(*, exif: bytes | None = None, xmp: bytes | None = XMP, iptc: bytes | None = None,
                 profile: bytes | None = None, dpi=(600, 600)) -> bytes:
    """A gray scan as archives hold them: EXIF (Orientation 6, thumbnail), XMP, IPTC, sRGB profile, 600 dpi."""
    buf = io.BytesIO()
    kwargs = {"dpi": dpi, "icc_profile": profile or icc.srgb_profile_bytes()}
    if xmp is not None:
        kwargs["xmp"] = xmp
    Image.fromarray(gray()).save(buf, "JPEG", quality=92,
                                 exif=b"Exif\0\0" + (exif if exif is not None else exif_block()), **kwargs)
    return splice_app13(buf.getvalue(), iptc if iptc is not None else iim())
