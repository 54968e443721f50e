"""What a source says about itself, carried into every output, plus what we say: that a machine made its colours.

Archives publish outputs that must stay tied to their catalogue records (EXIF Artist/Copyright/ImageDescription,
IPTC captions, the XMP ``dc:identifier``) and must declare machine-made colour (IPTC DigitalSourceType, the EU AI
Act's machine-readable marking). So:

* :func:`read_metadata` takes the source's blocks from its bytes, as they are: the EXIF block (Orientation reset
  to 1, since decoding already turned the pixels upright; the embedded thumbnail (IFD1) removed, since it shows
  the uncolorized, possibly uncropped scan; every other byte as it was, so maker notes keep their offsets),
  IPTC-IIM, the XMP packet, the ICC profile and the resolution. Containers are walked by our own code (JPEG
  segments, PNG chunks, RIFF chunks, TIFF IFDs): no interpretation, bounded work, and a block that cannot be
  parsed is dropped with a reason (:attr:`SourceMetadata.dropped`) instead of costing the image.
* :func:`build_xmp` merges our provenance into the source's XMP: the source's properties stay; ours replace
  only what would be false of the output (its DigitalSourceType, its InstanceID).
* :func:`write` puts everything into an encoded output (JPEG, PNG 8/16, WebP, TIFF 8/16) by container surgery
  on the encoder's bytes, and says what the format could not hold. Every output gets an sRGB ICC profile: its
  pixels are sRGB (the source's own profile was applied on decode, see :mod:`colorize_core.icc`).

What each format holds is the README's table ("Archival outputs and provenance").
"""

from __future__ import annotations

import functools
import io
import re
import struct
import uuid
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from importlib import metadata as _pkg_metadata
from xml.sax.saxutils import escape, quoteattr

from PIL import Image

from . import icc as icc_mod
from .imageio import canonical_format

__all__ = [
    "DIGITAL_SOURCE_TYPE",
    "Derivation",
    "SourceMetadata",
    "Written",
    "build_xmp",
    "project_version",
    "read_metadata",
    "summarize",
    "write",
]

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
"""IPTC's term for an existing image (the scan: a capture) edited with a trained model."""

_NO_IPTC = {"png": "PNG has no place for IPTC-IIM", "webp": "WebP has no place for IPTC-IIM"}

_MAX_BLOCK = 16 * 1024 * 1024  # largest decompressed metadata chunk read (zlib bombs in PNG text chunks)
_JPEG_SEGMENT = 65533  # payload bytes of one JPEG APPn segment (65535 minus its length field)


@functools.cache
def project_version() -> str:
    """The installed project's version (read once per process: importlib.metadata parses the METADATA file)."""
    try:
        return _pkg_metadata.version("colorize")
    except _pkg_metadata.PackageNotFoundError:
        return "unknown"


# =========================================================================================== the source side


@dataclass(frozen=True)
class SourceMetadata:
    """The source's metadata blocks, raw. ``exif`` is TIFF-structured (it starts ``II*\\0`` or ``MM\\0*``; no
    ``Exif\\0\\0`` prefix); ``iptc`` the IIM datasets; ``xmp`` the packet's bytes; ``dpi`` (x, y) in pixels per
    inch. ``dropped`` holds one line per block that could not be used, and why."""

    exif: bytes | None = None
    iptc: bytes | None = None
    xmp: bytes | None = None
    icc: bytes | None = None
    dpi: tuple[float, float] | None = None
    dropped: tuple[str, ...] = ()


class _Bad(ValueError):
    """A block that cannot be parsed; ``str`` is the reason."""


# What malformed bytes make the parsers raise (a bug of ours raises something else, and is not hidden).
_PARSE_ERRORS = (_Bad, struct.error, IndexError, ValueError, KeyError, OverflowError, zlib.error, RecursionError)


def read_metadata(data: bytes) -> SourceMetadata:
    """The source's metadata blocks from its bytes (see the module docstring). Never raises for bad metadata;
    a file that is not an image of a known container gives empty metadata (decoding reports that)."""
    data = bytes(data)
    blocks: dict[str, object] = {}
    dropped: list[str] = []
    try:
        if data.startswith(b"\xff\xd8"):
            _read_jpeg(data, blocks, dropped)
        elif data.startswith(b"\x89PNG\r\n\x1a\n"):
            _read_png(data, blocks, dropped)
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            _read_webp(data, blocks, dropped)
        elif data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
            _read_tiff(data, blocks, dropped)
        else:
            _read_other(data, blocks, dropped)
    except _PARSE_ERRORS as exc:  # a broken container: what we have so far
        dropped.append(f"metadata: container unreadable past some point ({_short(exc)})")
    exif = _checked(blocks.get("exif"), _clean_exif, "exif", dropped)
    iptc = _checked(blocks.get("iptc"), _check_iim, "iptc", dropped)
    xmp = _checked(blocks.get("xmp"), _parse_xmp, "xmp", dropped, "dropped, ours written alone")
    dpi = blocks.get("dpi")
    if dpi is None and exif is not None:
        dpi = _exif_dpi(exif)
    if dpi is None and xmp is not None:
        dpi = _xmp_dpi(xmp)
    return SourceMetadata(exif=exif, iptc=iptc, xmp=xmp, icc=blocks.get("icc"), dpi=dpi, dropped=tuple(dropped))


def _checked(block, check, name: str, dropped: list[str], outcome: str = "dropped"):
    """``block`` if ``check`` accepts it (its result when it returns bytes: a cleaned block), else None and a
    reason in ``dropped``."""
    if block is None:
        return None
    try:
        result = check(block)
    except _PARSE_ERRORS as exc:
        dropped.append(f"{name}: unreadable ({_short(exc)}), {outcome}")
        return None
    return result if isinstance(result, bytes) else block


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 100 else text[:97] + "..."


# --------------------------------------------------------------------------- JPEG


def _jpeg_segments(data: bytes):
    """(marker, payload start, payload end) of each segment before the scan data."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise _Bad(f"no JPEG marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > len(data):
            raise _Bad(f"JPEG segment at byte {pos} runs past the file")
        yield marker, pos + 4, pos + 2 + length
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no metadata after
            return
        pos += 2 + length


_XMP_SIG = b"http://ns.adobe.com/xap/1.0/\0"
_XMP_EXT_SIG = b"http://ns.adobe.com/xmp/extension/\0"
_ICC_SIG = b"ICC_PROFILE\0"
_PS_SIG = b"Photoshop 3.0\0"


def _read_jpeg(data: bytes, blocks: dict, dropped: list[str]) -> None:
    icc_parts: dict[int, bytes] = {}
    icc_count = 0
    irb = b""
    for marker, start, end in _jpeg_segments(data):
        seg = data[start:end]
        if marker == 0xE0 and seg.startswith(b"JFIF\0") and len(seg) >= 12:
            units, xd, yd = seg[7], *struct.unpack_from(">HH", seg, 8)
            if units in (1, 2) and xd and yd:
                scale = 1.0 if units == 1 else 2.54
                blocks["dpi"] = (xd * scale, yd * scale)
        elif marker == 0xE1 and seg.startswith(b"Exif\0\0") and "exif" not in blocks:
            blocks["exif"] = seg[6:]
        elif marker == 0xE1 and seg.startswith(_XMP_SIG) and "xmp" not in blocks:
            blocks["xmp"] = seg[len(_XMP_SIG):]
        elif marker == 0xE1 and seg.startswith(_XMP_EXT_SIG):
            if "extended XMP" not in " ".join(dropped):
                dropped.append("xmp: extended XMP (the part of a packet over 64 KB) not carried")
        elif marker == 0xE2 and seg.startswith(_ICC_SIG) and len(seg) > 14:
            icc_parts[seg[12]] = seg[14:]
            icc_count = seg[13]
        elif marker == 0xED and seg.startswith(_PS_SIG):
            irb += seg[len(_PS_SIG):]
    if icc_parts:
        if icc_count and sorted(icc_parts) == list(range(1, icc_count + 1)):
            blocks["icc"] = b"".join(icc_parts[i] for i in sorted(icc_parts))
        else:
            dropped.append("icc: profile chunks missing or out of order, ignored")
    if irb:
        try:
            iim = _irb_iptc(irb)
        except _PARSE_ERRORS as exc:
            dropped.append(f"iptc: Photoshop resources unreadable ({_short(exc)}), dropped")
        else:
            if iim:
                blocks["iptc"] = iim


def _irb_iptc(irb: bytes) -> bytes | None:
    """The IPTC-IIM resource (0x0404) of Photoshop image resource blocks."""
    pos = 0
    while pos + 12 <= len(irb):
        if irb[pos: pos + 4] != b"8BIM":
            raise _Bad(f"no 8BIM resource at byte {pos}")
        (rid,) = struct.unpack_from(">H", irb, pos + 4)
        name_len = irb[pos + 6]
        pos += 7 + name_len + ((name_len + 1) % 2)  # Pascal name padded to even
        (size,) = struct.unpack_from(">I", irb, pos)
        pos += 4
        if pos + size > len(irb):
            raise _Bad("resource runs past its segment")
        if rid == 0x0404:
            return irb[pos: pos + size]
        pos += size + (size % 2)
    return None


def _check_iim(iim: bytes) -> None:
    """IIM datasets: 0x1C, record, dataset, 2-byte length (or an extended length)."""
    pos = 0
    while pos < len(iim):
        if iim[pos] == 0 and not iim[pos:].strip(b"\0"):
            return  # padding
        if iim[pos] != 0x1C or pos + 5 > len(iim):
            raise _Bad(f"no IIM dataset marker at byte {pos}")
        (length,) = struct.unpack_from(">H", iim, pos + 3)
        pos += 5
        if length & 0x8000:  # extended dataset: the next (length & 0x7FFF) bytes hold the length
            n = length & 0x7FFF
            if n > 4 or pos + n > len(iim):
                raise _Bad("bad extended IIM length")
            length = int.from_bytes(iim[pos: pos + n], "big")
            pos += n
        if pos + length > len(iim):
            raise _Bad("IIM dataset runs past the block")
        pos += length


# --------------------------------------------------------------------------- PNG


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, _MAX_BLOCK)
    if d.unconsumed_tail:
        raise _Bad(f"compressed chunk inflates past {_MAX_BLOCK // 2**20} MB")
    return out


def _chunks(data: bytes, pos: int, kind: str):
    """(type, offset, body size) of each chunk from ``pos``: PNG's (length, type, body, CRC) or RIFF's (type,
    size, body, pad to even), up to PNG's IEND. The body is at ``offset + 8``; it is not sliced here, so
    walking past image data copies nothing."""
    png = kind == "PNG"
    while pos + 8 <= len(data):
        if png:
            size, ctype = struct.unpack_from(">I4s", data, pos)
            step = 12 + size
        else:
            ctype, size = struct.unpack_from("<4sI", data, pos)
            step = 8 + size + size % 2
        if pos + 8 + size + (4 if png else 0) > len(data):
            raise _Bad(f"{kind} chunk {ctype!r} runs past the file")
        yield ctype, pos, size
        if ctype == b"IEND":
            return
        pos += step


def _raw_profile(text: bytes) -> bytes:
    """ImageMagick's ``Raw profile type ...`` text chunk: a name line, a length line, then hex."""
    parts = text.split(b"\n", 3)
    if len(parts) < 4:
        raise _Bad("raw profile without a length line")
    n = int(parts[2].strip())
    raw = bytes.fromhex(re.sub(rb"\s+", b"", parts[3]).decode("ascii"))
    if len(raw) != n:
        raise _Bad(f"raw profile holds {len(raw)} of {n} bytes")
    return raw


def _read_png(data: bytes, blocks: dict, dropped: list[str]) -> None:
    for ctype, pos, size in _chunks(data, 8, "PNG"):
        if ctype == b"IDAT":
            continue
        body = data[pos + 8: pos + 8 + size]
        try:
            if ctype == b"pHYs" and len(body) == 9:
                x, y, unit = struct.unpack(">IIB", body)
                if unit == 1 and x and y:  # pixels per metre: 600 dpi is stored as 23622
                    blocks["dpi"] = (round(x * 0.0254, 2), round(y * 0.0254, 2))
            elif ctype == b"iCCP":
                name_end = body.index(b"\0")
                blocks["icc"] = _inflate(body[name_end + 2:])
            elif ctype == b"eXIf":
                blocks["exif"] = body[6:] if body.startswith(b"Exif\0\0") else body
            elif ctype == b"iTXt" and body.startswith(b"XML:com.adobe.xmp\0"):
                rest = body[len(b"XML:com.adobe.xmp\0"):]
                compressed = rest[0] == 1
                rest = rest[2:]
                rest = rest[rest.index(b"\0") + 1:]  # language tag
                rest = rest[rest.index(b"\0") + 1:]  # translated keyword
                blocks["xmp"] = _inflate(rest) if compressed else rest
            elif ctype in (b"zTXt", b"tEXt") and body.startswith(b"Raw profile type "):
                key, _, rest = body.partition(b"\0")
                kind = key[len(b"Raw profile type "):].decode("latin-1").lower()
                text = _inflate(rest[1:]) if ctype == b"zTXt" else rest
                name = {"exif": "exif", "iptc": "iptc", "xmp": "xmp", "icc": "icc", "icm": "icc"}.get(kind)
                if name and name not in blocks:
                    raw = _raw_profile(text)
                    blocks[name] = raw[6:] if name == "exif" and raw.startswith(b"Exif\0\0") else raw
        except _PARSE_ERRORS as exc:
            dropped.append(f"{_PNG_NAMES.get(ctype, 'metadata')}: PNG {ctype.decode('latin-1')} chunk unreadable "
                           f"({_short(exc)}), dropped")


_PNG_NAMES = {b"iCCP": "icc", b"eXIf": "exif", b"iTXt": "xmp", b"zTXt": "metadata", b"tEXt": "metadata",
              b"pHYs": "dpi"}


# --------------------------------------------------------------------------- WebP


def _read_webp(data: bytes, blocks: dict, dropped: list[str]) -> None:
    for ctype, pos, size in _chunks(data, 12, "WebP"):
        body = data[pos + 8: pos + 8 + size] if ctype in (b"ICCP", b"EXIF", b"XMP ") else b""
        if ctype == b"ICCP":
            blocks["icc"] = body
        elif ctype == b"EXIF":
            blocks["exif"] = body[6:] if body.startswith(b"Exif\0\0") else body
        elif ctype == b"XMP ":
            blocks["xmp"] = body


# --------------------------------------------------------------------------- TIFF structures

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
               16: 8, 17: 8, 18: 8}
_CLASSIC_TYPES = set(range(1, 14))
_SUB_IFDS = {34665: "exif", 34853: "gps", 40965: "interop"}  # pointer tags whose target is an IFD of tags
_MAX_ENTRIES = 4096
_MAX_DEPTH = 3  # IFD0 -> EXIF -> Interop is as deep as EXIF goes; anything deeper is hostile


@dataclass
class _Entry:
    tag: int
    type: int
    count: int
    value: bytes  # the value's bytes, count * size of type
    pos: int  # where the entry itself is (for patching in place)
    data_at: int | None  # where out-of-line values are, None if inline


class _Tiff:
    """A read-only view of a classic or Big TIFF structure (a file, or an EXIF block)."""

    def __init__(self, data: bytes):
        if data[:2] == b"II":
            self.order = "<"
        elif data[:2] == b"MM":
            self.order = ">"
        else:
            raise _Bad("no TIFF byte-order mark")
        (magic,) = struct.unpack_from(self.order + "H", data, 2)
        if magic == 42:
            self.big = False
            (self.first,) = struct.unpack_from(self.order + "I", data, 4)
        elif magic == 43:
            self.big = True
            (self.first,) = struct.unpack_from(self.order + "Q", data, 8)
        else:
            raise _Bad(f"TIFF magic {magic}")
        self.data = data

    def ifd(self, offset: int) -> tuple[list[_Entry], int, int]:
        """(entries, position of the next-IFD pointer, the next IFD's offset)."""
        d, o = self.data, self.order
        if offset < 8 or offset + 2 > len(d):
            raise _Bad(f"IFD offset {offset} outside the block")
        if self.big:
            (n,) = struct.unpack_from(o + "Q", d, offset)
            start, entry_size, inline, fmt_count, fmt_ptr = offset + 8, 20, 8, "Q", "Q"
        else:
            (n,) = struct.unpack_from(o + "H", d, offset)
            start, entry_size, inline, fmt_count, fmt_ptr = offset + 2, 12, 4, "I", "I"
        if n > _MAX_ENTRIES or start + n * entry_size + inline > len(d):
            raise _Bad(f"IFD at {offset} runs past the block ({n} entries)")
        entries = []
        for i in range(n):
            pos = start + i * entry_size
            tag, typ = struct.unpack_from(o + "HH", d, pos)
            (count,) = struct.unpack_from(o + fmt_count, d, pos + 4)
            size = _TYPE_SIZES.get(typ)
            if size is None:
                continue  # unknown type: skipped, as readers do
            nbytes = size * count
            field_at = pos + (12 if self.big else 8)
            if nbytes <= inline:
                value, data_at = d[field_at: field_at + nbytes], None
            else:
                (data_at,) = struct.unpack_from(o + fmt_ptr, d, field_at)
                if data_at + nbytes > len(d):
                    raise _Bad(f"tag {tag} points past the block")
                value = d[data_at: data_at + nbytes]
            entries.append(_Entry(tag, typ, count, value, pos, data_at))
        next_pos = start + n * entry_size
        (next_ifd,) = struct.unpack_from(o + fmt_ptr, d, next_pos)
        return entries, next_pos, next_ifd

    def pointer(self, entry: _Entry) -> int:
        if entry.type not in (4, 13, 16, 18) or entry.count < 1:
            raise _Bad(f"sub-IFD tag {entry.tag} has type {entry.type}")
        fmt = "Q" if entry.type in (16, 18) else "I"
        return struct.unpack_from(self.order + fmt, entry.value, 0)[0]

    def spans(self, offset: int, seen: set[int], depth: int = 0) -> list[tuple[int, int]]:
        """Byte ranges an IFD and everything it references (sub-IFDs included) occupy."""
        if offset in seen:
            raise _Bad("IFD loop")
        if depth > _MAX_DEPTH:
            raise _Bad("sub-IFDs nested too deep")
        seen.add(offset)
        entries, next_pos, _ = self.ifd(offset)
        out = [(offset, next_pos + (8 if self.big else 4))]
        for e in entries:
            if e.data_at is not None:
                out.append((e.data_at, e.data_at + len(e.value)))
            if e.tag in _SUB_IFDS:
                out += self.spans(self.pointer(e), seen, depth + 1)
        return out


def _entries(t: _Tiff, offset: int) -> dict[int, _Entry]:
    return {e.tag: e for e in t.ifd(offset)[0]}


def _clean_exif(block: bytes) -> bytes:
    """Orientation -> 1 and IFD1 (the thumbnail) removed, in place; every other byte as it was."""
    t = _Tiff(block)
    if t.big:
        raise _Bad("BigTIFF-structured EXIF")
    out = bytearray(block)
    entries, next_pos, ifd1 = t.ifd(t.first)
    for e in entries:
        if e.tag == 0x0112 and e.type == 3 and e.count == 1:
            struct.pack_into(t.order + "H", out, e.pos + 8, 1)
    keep = [(0, 8)] + t.spans(t.first, set())
    if ifd1:
        drop = []
        try:
            ifd1_entries, ifd1_next, _ = t.ifd(ifd1)
            drop.append((ifd1, ifd1_next + 4))
            tags = {e.tag: e for e in ifd1_entries}
            for e in ifd1_entries:
                if e.data_at is not None:
                    drop.append((e.data_at, e.data_at + len(e.value)))
            if 0x0201 in tags and 0x0202 in tags:  # JPEG thumbnail offset and length
                start, length = t.pointer(tags[0x0201]), t.pointer(tags[0x0202])
                drop.append((start, min(start + length, len(block))))
            for off_e, cnt_e in ((tags.get(0x0111), tags.get(0x0117)),):  # strip thumbnails
                if off_e is not None and cnt_e is not None:
                    offs = _uints(t, off_e)
                    cnts = _uints(t, cnt_e)
                    drop += [(o, min(o + c, len(block))) for o, c in zip(offs, cnts)]
        except _Bad:
            drop = []  # an unreadable IFD1: only the pointer to it goes
        struct.pack_into(t.order + "I", out, next_pos, 0)
        keep_end = max(end for _, end in keep)
        if drop and min(s for s, _ in drop) >= keep_end:
            del out[keep_end + (keep_end % 2):]
        else:
            for s, e in drop:
                if not any(ks < e and s < ke for ks, ke in keep):
                    out[s:e] = bytes(e - s)
    return bytes(out)


def _uints(t: _Tiff, e: _Entry) -> list[int]:
    fmt = {3: "H", 4: "I", 16: "Q"}.get(e.type)
    if fmt is None:
        raise _Bad(f"tag {e.tag} is not an offset list")
    return list(struct.unpack(f"{t.order}{e.count}{fmt}", e.value))


def _rational(t: _Tiff, e: _Entry) -> float | None:
    if e.type != 5 or e.count < 1:
        return None
    num, den = struct.unpack_from(t.order + "II", e.value, 0)
    return num / den if den else None


def _resolution(t: _Tiff, tags: dict[int, _Entry]) -> tuple[float, float] | None:
    x, y = tags.get(282), tags.get(283)
    unit = tags.get(296)
    unit_value = struct.unpack_from(t.order + "H", unit.value, 0)[0] if unit is not None and unit.type == 3 else 2
    if x is None or y is None or unit_value not in (2, 3):
        return None
    xv, yv = _rational(t, x), _rational(t, y)
    if not xv or not yv:
        return None
    scale = 1.0 if unit_value == 2 else 2.54
    return (xv * scale, yv * scale)


def _exif_dpi(block: bytes) -> tuple[float, float] | None:
    try:
        t = _Tiff(block)
        return _resolution(t, _entries(t, t.first))
    except _PARSE_ERRORS:
        return None


# Tags of a TIFF file's IFD0 that describe the file's own pixels or hold the blocks read separately: never
# copied into an EXIF block (the output file writes its own).
_STRUCTURAL = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 264, 265, 266, 273, 277, 278, 279, 280, 281, 284, 286, 287, 290, 291,
    292, 293, 296, 282, 283, 297, 301, 317, 318, 319, 320, 321, 322, 323, 324, 325, 330, 332, 338, 339, 340, 341,
    347, 512, 513, 514, 515, 517, 518, 519, 520, 521, 529, 530, 531, 532, 700, 32781, 32932, 32995, 32996, 32997,
    32998, 33421, 33422, 33423, 33550, 33723, 33922, 34377, 34675, 34732, 37724, 42112, 42113, 50341, 52545,
})


class _Builder:
    """A classic-TIFF structure being written: an EXIF block (``base`` 0), or what is appended to an output
    file of ``base`` bytes (offsets count from the file's start; the file itself is not copied)."""

    def __init__(self, order: str, buf: bytearray, base: int = 0):
        self.order, self.buf, self.base = order, buf, base

    def _align(self) -> None:
        if (self.base + len(self.buf)) % 2:
            self.buf += b"\0"

    def put(self, value: bytes) -> int:
        self._align()
        at = self.base + len(self.buf)
        self.buf += value
        return at

    def ifd(self, entries: list[tuple[int, int, int, bytes]], next_ifd: int = 0) -> int:
        """Write an IFD of (tag, type, count, value bytes); out-of-line values first. Returns its offset."""
        fields = []
        for tag, typ, count, value in sorted(entries, key=lambda e: e[0]):
            if len(value) <= 4:
                fields.append(struct.pack(self.order + "HHI", tag, typ, count) + value.ljust(4, b"\0"))
            else:
                at = self.put(value)
                fields.append(struct.pack(self.order + "HHII", tag, typ, count, at))
        self._align()
        at = self.base + len(self.buf)
        self.buf += struct.pack(self.order + "H", len(fields)) + b"".join(fields)
        self.buf += struct.pack(self.order + "I", next_ifd)
        return at

    def copy_ifd(self, src: _Tiff, offset: int, skip: frozenset[int] = frozenset(), seen: set[int] | None = None,
                 depth: int = 0) -> tuple[list, int]:
        """The entries of ``src``'s IFD at ``offset`` re-based into this structure (sub-IFDs copied first).
        Returns (entries for :meth:`ifd`, number of entries left out)."""
        seen = set() if seen is None else seen
        if offset in seen:
            raise _Bad("IFD loop")
        if depth > _MAX_DEPTH:
            raise _Bad("sub-IFDs nested too deep")
        seen.add(offset)
        out, left_out = [], 0
        for e in src.ifd(offset)[0]:
            if e.tag in skip:
                continue
            if e.type not in _CLASSIC_TYPES:
                left_out += 1
                continue
            if e.tag in _SUB_IFDS:
                child, n = self.copy_ifd(src, src.pointer(e), seen=seen, depth=depth + 1)
                left_out += n
                out.append((e.tag, 4, 1, struct.pack(self.order + "I", self.ifd(child))))
                continue
            value = e.value if src.order == self.order else _swap(e.type, e.count, e.value)
            out.append((e.tag, e.type, e.count, value))
        return out, left_out


def _swap(typ: int, count: int, value: bytes) -> bytes:
    """A tag's value bytes in the other byte order."""
    unit = {3: 2, 8: 2, 4: 4, 9: 4, 11: 4, 13: 4, 12: 8, 5: 4, 10: 4}.get(typ)
    if unit is None:
        return value
    return b"".join(value[i: i + unit][::-1] for i in range(0, len(value), unit))


def _read_tiff(data: bytes, blocks: dict, dropped: list[str]) -> None:
    t = _Tiff(data)
    tags = _entries(t, t.first)
    if 700 in tags:
        blocks["xmp"] = tags[700].value
    if 34675 in tags:
        blocks["icc"] = tags[34675].value
    if 33723 in tags:
        blocks["iptc"] = tags[33723].value
    elif 34377 in tags:
        try:
            iim = _irb_iptc(tags[34377].value)
        except _PARSE_ERRORS as exc:
            dropped.append(f"iptc: Photoshop resources unreadable ({_short(exc)}), dropped")
        else:
            if iim:
                blocks["iptc"] = iim
    dpi = _resolution(t, tags)
    if dpi:
        blocks["dpi"] = dpi
    try:
        blocks_exif = _exif_from_tiff(t)
    except _PARSE_ERRORS as exc:
        dropped.append(f"exif: TIFF tags unreadable ({_short(exc)}), dropped")
    else:
        if blocks_exif is not None:
            blocks["exif"] = blocks_exif


def _exif_from_tiff(t: _Tiff) -> bytes | None:
    """A TIFF source's descriptive IFD0 tags and its EXIF/GPS IFDs as an EXIF block (Orientation 1)."""
    order = t.order
    buf = bytearray((b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8))
    b = _Builder(order, buf)
    entries, _ = b.copy_ifd(t, t.first, skip=_STRUCTURAL | {0x0112})
    if not entries:
        return None
    entries.append((0x0112, 3, 1, struct.pack(order + "H", 1)))
    at = b.ifd(entries)
    struct.pack_into(order + "I", buf, 4, at)
    return bytes(buf)


# --------------------------------------------------------------------------- other formats


def _read_other(data: bytes, blocks: dict, dropped: list[str]) -> None:
    """BMP, GIF, JPEG 2000, PPM: what Pillow's header parse gives (no IPTC there)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            info = dict(im.info)
    except Exception:  # noqa: BLE001 - not an image: decoding says so
        return
    if info.get("icc_profile"):
        blocks["icc"] = info["icc_profile"]
    dpi = info.get("dpi")
    if isinstance(dpi, tuple) and len(dpi) == 2 and all(dpi):
        blocks["dpi"] = (float(dpi[0]), float(dpi[1]))
    if isinstance(info.get("exif"), bytes):
        raw = info["exif"]
        blocks["exif"] = raw[6:] if raw.startswith(b"Exif\0\0") else raw
    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp")
    if xmp:
        blocks["xmp"] = xmp.encode("utf-8") if isinstance(xmp, str) else xmp


def _xmp_dpi(packet: bytes) -> tuple[float, float] | None:
    """tiff:XResolution/YResolution/ResolutionUnit of an XMP packet (where WebP outputs keep the dpi)."""
    rdf, _ = _parse_xmp(packet)
    descriptions = [d for d in rdf if d.tag == f"{{{_RDF}}}Description"]
    x, y, unit = (_find_simple(descriptions, _q("tiff", n)) for n in ("XResolution", "YResolution", "ResolutionUnit"))
    x, y = _xmp_rational(x), _xmp_rational(y)
    if not x or not y or (unit or "2") not in ("2", "3"):
        return None
    return (x, y) if (unit or "2") == "2" else (x * 2.54, y * 2.54)


def _xmp_rational(value: str | None) -> float | None:
    if not value:
        return None
    num, _, den = value.partition("/")
    try:
        v = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return v if v > 0 else None


# =========================================================================================== our XMP

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "xmpMM": "http://ns.adobe.com/xap/1.0/mm/",
    "stRef": "http://ns.adobe.com/xap/1.0/sType/ResourceRef#",
    "stEvt": "http://ns.adobe.com/xap/1.0/sType/ResourceEvent#",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    # Our own derivation record. A URN because the project has no web domain of its own; XMP accepts any
    # namespace URI, and readers show unknown namespaces' properties as they are.
    "colorize": "urn:colorize:derivation:1.0#",
}
_RDF, _X = NS["rdf"], NS["x"]
_XML_NS = "http://www.w3.org/XML/1998/namespace"


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


@dataclass(frozen=True)
class Derivation:
    """What made an output, from what: written into its XMP (and, signed, into its C2PA manifest).

    ``source_id`` is the source's identifier as the run knows it (the manifest's ``uri``, or the image id);
    ``when`` is an ISO 8601 UTC time."""

    source_id: str
    source_sha256: str
    model: str
    weights_sha256: str
    when: str
    software: str = "colorize"
    software_version: str = field(default_factory=project_version)
    source_format: str | None = None


def _parse_xmp(packet: bytes) -> tuple[ET.Element, dict[str, str]]:
    """(the rdf:RDF element, prefix -> namespace of the packet). XMP never has a DOCTYPE: one is refused, so
    no entity of any kind is expanded."""
    text = packet.rstrip(b"\0 \t\r\n")
    if b"<!DOCTYPE" in text[:4096].upper() or b"<!ENTITY" in text.upper():
        raise _Bad("a DOCTYPE or ENTITY in an XMP packet")
    prefixes: dict[str, str] = {}
    try:
        it = ET.iterparse(io.BytesIO(text), events=("start-ns",))
        for _, (prefix, uri) in it:
            prefixes.setdefault(prefix, uri)
        root = it.root
    except ET.ParseError as exc:
        raise _Bad(f"not XML: {exc}") from None
    rdf = root if root.tag == f"{{{_RDF}}}RDF" else root.find(f".//{{{_RDF}}}RDF")
    if rdf is None:
        raise _Bad("no rdf:RDF element")
    return rdf, prefixes


# Properties that would be false of the output if kept from the source: ours replace them.
_REPLACED = {_q("Iptc4xmpExt", "DigitalSourceType"), _q("Iptc4xmpExt", "AISystemUsed"),
             _q("Iptc4xmpExt", "AISystemVersionUsed"), _q("xmpMM", "InstanceID"), _q("xmpMM", "DerivedFrom")}


def build_xmp(source_xmp: bytes | None, record: Derivation, *, extra: dict[str, str] | None = None,
              iptc: bytes | None = None) -> bytes:
    """Our provenance merged into the source's XMP packet (or alone), as a complete packet.

    Kept: every property of the source, except the few that would be false of the output, which ours
    replace: ``Iptc4xmpExt:DigitalSourceType`` (the source's own, e.g. ``negativeFilm``, is kept as
    ``colorize:sourceDigitalSourceType``), ``AISystemUsed``/``AISystemVersionUsed``, ``xmpMM:InstanceID`` (a new
    one: a new file) and ``xmpMM:DerivedFrom`` (now the source). ``xmpMM:DocumentID`` stays (the same work).
    Added: ``xmpMM:History`` gains a ``derived`` event (appended to the source's), and our ``colorize:`` record:
    source identifier and sha256, model and weights sha256, project and version, when. ``extra`` adds simple
    properties by qualified name (``{"tiff:XResolution": "600/1"}``) where the source has none. ``iptc``
    (IPTC-IIM, given for formats that cannot hold it) is mapped into its XMP equivalents where the source's
    XMP lacks them, as the Metadata Working Group's guidance does (title, caption, creator, rights,
    keywords, credit, source, date, place, headline, instructions).
    An unparseable source packet is not passed here (:func:`read_metadata` dropped it)."""
    if source_xmp:
        rdf, prefixes = _parse_xmp(source_xmp)
    else:
        rdf, prefixes = ET.Element(f"{{{_RDF}}}RDF"), {}
    descriptions = [d for d in rdf if d.tag == f"{{{_RDF}}}Description"]
    source_dst = _find_simple(descriptions, _q("Iptc4xmpExt", "DigitalSourceType"))
    source_iid = _find_simple(descriptions, _q("xmpMM", "InstanceID"))
    source_did = _find_simple(descriptions, _q("xmpMM", "DocumentID"))
    for d in descriptions:
        for name in _REPLACED:
            d.attrib.pop(name, None)
            for child in d.findall(name):
                d.remove(child)
        for name in [k for k in d.attrib if k.startswith(f"{{{NS['colorize']}}}")]:
            del d.attrib[name]
        for child in [c for c in d if c.tag.startswith(f"{{{NS['colorize']}}}")]:
            d.remove(child)

    ours = ET.SubElement(rdf, f"{{{_RDF}}}Description", {f"{{{_RDF}}}about": ""})
    instance = f"xmp.iid:{uuid.uuid4()}"
    _simple(ours, "Iptc4xmpExt", "DigitalSourceType", DIGITAL_SOURCE_TYPE)
    _simple(ours, "Iptc4xmpExt", "AISystemUsed", record.model)
    _simple(ours, "Iptc4xmpExt", "AISystemVersionUsed", f"sha256:{record.weights_sha256}")
    _simple(ours, "xmpMM", "InstanceID", instance)
    derived = ET.SubElement(ours, _q("xmpMM", "DerivedFrom"), {f"{{{_RDF}}}parseType": "Resource"})
    if source_did:
        _simple(derived, "stRef", "documentID", source_did)
    if source_iid:
        _simple(derived, "stRef", "instanceID", source_iid)
    _simple(derived, "stRef", "filePath", record.source_id)
    agent = f"{record.software} {record.software_version}"
    params = (f"colorized by a trained model ({record.model}, weights sha256 {record.weights_sha256}) "
              f"from {record.source_id} (sha256 {record.source_sha256}); the colours are machine-made")
    history = _history_seq(descriptions, ours)
    li = ET.SubElement(history, f"{{{_RDF}}}li", {f"{{{_RDF}}}parseType": "Resource"})
    for name, value in (("action", "derived"), ("instanceID", instance), ("when", record.when),
                        ("softwareAgent", agent), ("parameters", params)):
        _simple(li, "stEvt", name, value)
    for name, value in (("sourceIdentifier", record.source_id), ("sourceSHA256", record.source_sha256),
                        ("sourceFormat", record.source_format), ("sourceDigitalSourceType", source_dst),
                        ("model", record.model), ("weightsSHA256", record.weights_sha256),
                        ("software", record.software), ("softwareVersion", record.software_version),
                        ("when", record.when)):
        if value:
            _simple(ours, "colorize", name, value)
    for qname, value in (extra or {}).items():
        prefix, name = qname.split(":", 1)
        if _find_simple(descriptions, _q(prefix, name)) is None:
            _simple(ours, prefix, name, value)
    if iptc:
        _map_iim(iptc, descriptions, ours)
    return _packet(rdf, prefixes)


# IIM dataset (record 2) -> (XMP property, container): rdf:Alt (x-default), rdf:Seq, rdf:Bag or a simple value.
_IIM_TO_XMP = {
    5: ("dc", "title", "Alt"), 120: ("dc", "description", "Alt"), 80: ("dc", "creator", "Seq"),
    116: ("dc", "rights", "Alt"), 25: ("dc", "subject", "Bag"), 110: ("photoshop", "Credit", None),
    115: ("photoshop", "Source", None), 55: ("photoshop", "DateCreated", None), 90: ("photoshop", "City", None),
    95: ("photoshop", "State", None), 101: ("photoshop", "Country", None), 105: ("photoshop", "Headline", None),
    40: ("photoshop", "Instructions", None), 103: ("photoshop", "TransmissionReference", None),
    122: ("photoshop", "CaptionWriter", None),
}


def _iim_datasets(iim: bytes) -> dict[tuple[int, int], list[bytes]]:
    out: dict[tuple[int, int], list[bytes]] = {}
    pos = 0
    while pos + 5 <= len(iim) and iim[pos] == 0x1C:
        rec, ds, length = iim[pos + 1], iim[pos + 2], struct.unpack_from(">H", iim, pos + 3)[0]
        pos += 5
        if length & 0x8000:
            n = length & 0x7FFF
            length = int.from_bytes(iim[pos: pos + n], "big")
            pos += n
        out.setdefault((rec, ds), []).append(iim[pos: pos + length])
        pos += length
    return out


def _map_iim(iim: bytes, descriptions: list[ET.Element], ours: ET.Element) -> None:
    datasets = _iim_datasets(iim)
    utf8 = any(v.startswith(b"\x1b%G") for v in datasets.get((1, 90), []))

    def text(raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8" if utf8 else "latin-1", "replace")

    for ds, (prefix, name, container) in _IIM_TO_XMP.items():
        values = [text(v).strip() for v in datasets.get((2, ds), []) if v.strip()]
        qname = _q(prefix, name)
        if not values or any(qname in d.attrib or d.find(qname) is not None for d in descriptions):
            continue
        if ds == 55 and re.fullmatch(r"\d{8}", values[0]):
            values = [f"{values[0][:4]}-{values[0][4:6]}-{values[0][6:]}"]
        if container is None:
            _simple(ours, prefix, name, values[0])
            continue
        holder = ET.SubElement(ET.SubElement(ours, qname), f"{{{_RDF}}}{container}")
        for value in values if container != "Alt" else values[:1]:
            li = ET.SubElement(holder, f"{{{_RDF}}}li", {f"{{{_XML_NS}}}lang": "x-default"} if container == "Alt" else {})
            li.text = value


def _simple(parent: ET.Element, prefix: str, name: str, value: str) -> ET.Element:
    el = ET.SubElement(parent, _q(prefix, name))
    el.text = value
    return el


def _find_simple(descriptions: list[ET.Element], qname: str) -> str | None:
    for d in descriptions:
        if qname in d.attrib:
            return d.attrib[qname]
        el = d.find(qname)
        if el is not None and el.text and len(el) == 0:
            return el.text.strip()
    return None


def _history_seq(descriptions: list[ET.Element], ours: ET.Element) -> ET.Element:
    """The source's xmpMM:History rdf:Seq to append to, or a new one in our Description."""
    for d in descriptions:
        hist = d.find(_q("xmpMM", "History"))
        if hist is not None:
            seq = hist.find(f"{{{_RDF}}}Seq")
            if seq is not None:
                return seq
    return ET.SubElement(ET.SubElement(ours, _q("xmpMM", "History")), f"{{{_RDF}}}Seq")


def _packet(rdf: ET.Element, prefixes: dict[str, str]) -> bytes:
    """A complete XMP packet around ``rdf``: our own serialiser, so the source's namespace prefixes survive
    (ElementTree would rename every unknown one ``ns0``, ``ns1``...)."""
    uri_to_prefix: dict[str, str] = {}
    for prefix, uri in list(NS.items()) + list(prefixes.items()):
        if uri not in uri_to_prefix and prefix and prefix not in uri_to_prefix.values():
            uri_to_prefix[uri] = prefix
    used: dict[str, str] = {}

    def name(qname: str) -> str:
        if qname[0] != "{":
            return qname
        uri, local = qname[1:].split("}", 1)
        if uri == _XML_NS:  # xml:lang and friends: bound by XML itself, never declared
            return f"xml:{local}"
        prefix = uri_to_prefix.get(uri)
        if prefix is None:
            prefix = f"ns{len(uri_to_prefix)}"
            while prefix in uri_to_prefix.values():
                prefix += "_"
            uri_to_prefix[uri] = prefix
        used[prefix] = uri
        return f"{prefix}:{local}"

    def emit(el: ET.Element, out: list[str]) -> None:
        attrs = "".join(f" {name(k)}={quoteattr(v)}" for k, v in el.attrib.items())
        tag = name(el.tag)
        if len(el) == 0 and not el.text:
            out.append(f"<{tag}{attrs}/>")
        else:
            out.append(f"<{tag}{attrs}>{escape(el.text or '')}")
            for child in el:
                emit(child, out)
                out.append(escape(child.tail or ""))
            out.append(f"</{tag}>")

    body: list[str] = []
    emit(rdf, body)
    name(f"{{{_X}}}xmpmeta")
    decls = "".join(f" xmlns:{p}={quoteattr(u)}" for p, u in sorted(used.items()))
    xml = (f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
           f'<x:xmpmeta{decls}>\n{"".join(body)}\n</x:xmpmeta>\n<?xpacket end="w"?>')
    return xml.encode("utf-8")


# =========================================================================================== the output side


@dataclass(frozen=True)
class Written:
    """An encoded output with its metadata in place, and what the format could not hold (one line each)."""

    data: bytes
    dropped: tuple[str, ...]


def summarize(*dropped_lists) -> str | None:
    """The metrics row's metadata column: every dropped block and why, ``; ``-joined, or None if nothing was."""
    lines = [line.replace(";", ",") for lines in dropped_lists for line in (lines or ())]
    return "; ".join(dict.fromkeys(lines)) or None


def write(encoded: bytes, fmt: str, source: SourceMetadata, record: Derivation) -> Written:
    """``encoded`` (what :func:`colorize_core.imageio.encode_image` made) with the source's EXIF, IPTC-IIM and
    dpi, our XMP merged into the source's, and an sRGB ICC profile."""
    fmt = canonical_format(fmt)
    dropped: list[str] = []
    extra = {}
    if fmt == "webp" and source.dpi:  # WebP has no resolution field: XMP carries it
        extra = {"tiff:XResolution": _ratio(source.dpi[0]), "tiff:YResolution": _ratio(source.dpi[1]),
                 "tiff:ResolutionUnit": "2"}
    exif, iptc = source.exif, source.iptc
    if iptc and fmt in ("png", "webp"):
        dropped.append(f"iptc: {_NO_IPTC[fmt]}: its fields were mapped into the XMP")
    xmp = build_xmp(source.xmp, record, extra=extra, iptc=iptc if fmt in ("png", "webp") else None)
    icc = icc_mod.srgb_profile_bytes()
    if fmt in ("png", "webp"):
        iptc = None
    if fmt == "jpeg":
        if exif and len(exif) + 6 > _JPEG_SEGMENT:
            dropped.append(f"exif: {len(exif)} bytes do not fit one JPEG APP1 segment, dropped")
            exif = None
        if len(xmp) + len(_XMP_SIG) > _JPEG_SEGMENT:
            dropped.append(f"xmp: the source's packet is too large for JPEG ({len(xmp)} bytes), ours written alone")
            xmp = build_xmp(None, record)
        if iptc and len(iptc) + 64 > _JPEG_SEGMENT:
            dropped.append(f"iptc: {len(iptc)} bytes do not fit one JPEG APP13 segment, dropped")
            iptc = None
        data = _jpeg_insert(encoded, exif, xmp, icc, iptc, source.dpi)
    elif fmt == "png":
        data = _png_insert(encoded, exif, xmp, icc, source.dpi)
    elif fmt == "webp":
        data = _webp_insert(encoded, exif, xmp, icc)
    else:  # tiff
        data, left_out = _tiff_insert(encoded, exif, xmp, icc, iptc, source.dpi)
        if left_out:
            dropped.append(f"exif: {left_out} BigTIFF-only tag(s) cannot be written to a classic TIFF, dropped")
    return Written(data, tuple(dropped))


def _ratio(value: float) -> str:
    return f"{round(value * 100)}/100" if value != int(value) else f"{int(value)}/1"


# --------------------------------------------------------------------------- JPEG


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _jpeg_insert(data: bytes, exif, xmp, icc, iptc, dpi) -> bytes:
    """Our segments right after SOI and the encoder's JFIF APP0 (whose density becomes the dpi)."""
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG")
    pos, head = 2, bytearray(b"\xff\xd8")
    if data[2:4] == b"\xff\xe0" and data[6:11] == b"JFIF\0":
        (length,) = struct.unpack_from(">H", data, 4)
        app0 = bytearray(data[2: 4 + length])
        if dpi and all(0 < round(v) <= 65535 for v in dpi):
            app0[11] = 1
            struct.pack_into(">HH", app0, 12, round(dpi[0]), round(dpi[1]))
        head += app0
        pos = 4 + length
    if exif:
        head += _segment(0xE1, b"Exif\0\0" + exif)
    head += _segment(0xE1, _XMP_SIG + xmp)
    chunk = _JPEG_SEGMENT - 14
    parts = [icc[i: i + chunk] for i in range(0, len(icc), chunk)]
    for i, part in enumerate(parts, 1):
        head += _segment(0xE2, _ICC_SIG + bytes([i, len(parts)]) + part)
    if iptc:
        res = b"8BIM" + struct.pack(">H", 0x0404) + b"\0\0" + struct.pack(">I", len(iptc)) + iptc
        res += b"\0" * (len(iptc) % 2)
        head += _segment(0xED, _PS_SIG + res)
    return bytes(head) + data[pos:]


# --------------------------------------------------------------------------- PNG


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def _png_insert(data: bytes, exif, xmp, icc, dpi) -> bytes:
    """iCCP, pHYs, eXIf and the XMP iTXt right after IHDR (all before the image data, as readers expect)."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    (ihdr_len,) = struct.unpack_from(">I", data, 8)
    after_ihdr = 8 + 12 + ihdr_len
    out = [data[:after_ihdr], _chunk(b"iCCP", b"sRGB\0\0" + zlib.compress(icc))]
    if dpi:
        ppm = [max(1, round(v / 0.0254)) for v in dpi]
        out.append(_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1)))
    if exif:
        out.append(_chunk(b"eXIf", exif))
    out.append(_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp))
    # the encoder's own chunks of these kinds would contradict ours (Pillow writes none unless asked)
    replaced = {b"iCCP", b"sRGB", b"pHYs", b"eXIf", b"gAMA", b"cHRM", b"iTXt"}
    view = memoryview(data)  # image data is joined once, not sliced into copies first
    out += [view[pos: pos + 12 + size] for ctype, pos, size in _chunks(data, after_ihdr, "PNG")
            if ctype not in replaced or (ctype == b"iTXt" and not data.startswith(b"XML:com.adobe.xmp\0", pos + 8))]
    return b"".join(out)


# --------------------------------------------------------------------------- WebP


def _riff(ctype: bytes, body: bytes) -> bytes:
    return ctype + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def _webp_size(data: bytes) -> tuple[int, int]:
    for ctype, pos, _ in _chunks(data, 12, "WebP"):
        body = data[pos + 8: pos + 18]
        if ctype == b"VP8X":
            w = int.from_bytes(body[4:7], "little") + 1
            h = int.from_bytes(body[7:10], "little") + 1
            return w, h
        if ctype == b"VP8 ":
            w, h = struct.unpack_from("<HH", body, 6)
            return w & 0x3FFF, h & 0x3FFF
        if ctype == b"VP8L":
            bits = int.from_bytes(body[1:5], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise ValueError("WebP without an image chunk")


def _webp_insert(data: bytes, exif, xmp, icc) -> bytes:
    """The extended layout: VP8X (flags), ICCP, the image chunks, EXIF, XMP."""
    if not (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        raise ValueError("not a WebP")
    w, h = _webp_size(data)
    flags = 0
    image = []
    for ctype, pos, size in _chunks(data, 12, "WebP"):
        if ctype == b"VP8X":
            flags |= data[pos + 8] & 0x12  # keep the encoder's alpha and animation bits
        elif ctype not in (b"ICCP", b"EXIF", b"XMP "):
            image.append(_riff(ctype, data[pos + 8: pos + 8 + size]))
    flags |= 0x20 | 0x04 | (0x08 if exif else 0)
    vp8x = bytes([flags, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    chunks = [_riff(b"VP8X", vp8x), _riff(b"ICCP", icc), *image]
    if exif:
        chunks.append(_riff(b"EXIF", exif))
    chunks.append(_riff(b"XMP ", xmp))
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


# --------------------------------------------------------------------------- TIFF


def _tiff_insert(data: bytes, exif, xmp, icc, iptc, dpi) -> tuple[bytes, int]:
    """A new IFD0 appended to the encoder's file: its own entries, the EXIF block's IFD0 tags and sub-IFDs
    (re-based), XMP (700), IPTC (33723), ICC (34675) and the resolution; the header then points at it. The
    encoder's IFD0 stays behind, unreferenced (a few hundred bytes)."""
    t = _Tiff(data)
    if t.big:
        raise ValueError("BigTIFF output is not supported")
    order = t.order
    tail = bytearray()
    b = _Builder(order, tail, base=len(data))
    own, next_pos, next_ifd = t.ifd(t.first)
    entries = {e.tag: (e.tag, e.type, e.count, e.value) for e in own}
    left_out = 0
    if exif:
        src = _Tiff(exif)
        copied, left_out = b.copy_ifd(src, src.first, skip=_STRUCTURAL | {0x0112})
        for e in copied:  # the source's descriptive tags win over the encoder's (it writes none of them)
            entries[e[0]] = e
    entries[0x0112] = (0x0112, 3, 1, struct.pack(order + "H", 1))
    entries[700] = (700, 1, len(xmp), xmp)
    entries[34675] = (34675, 7, len(icc), icc)
    if iptc:
        entries[33723] = (33723, 7, len(iptc), iptc)
    if dpi:
        for tag, v in ((282, dpi[0]), (283, dpi[1])):
            num, den = (round(v * 100), 100) if v != int(v) else (int(v), 1)
            entries[tag] = (tag, 5, 1, struct.pack(order + "II", num, den))
        entries[296] = (296, 3, 1, struct.pack(order + "H", 2))
    at = b.ifd(list(entries.values()), next_ifd)
    return b"".join((data[:4], struct.pack(order + "I", at), memoryview(data)[8:], tail)), left_out
