"""Read Qt binary resource files (``.rcc``, as written by ``rcc -binary``), pure Python.

Layout (qtbase ``src/corelib/io/qresource.cpp``): a 20-byte header ``"qres"``, format version, then the
offsets of the tree, data and names sections (all big-endian uint32; version >= 3 adds a flags word). The
tree is an array of fixed-size nodes (14 bytes, 22 from version 2 with a last-modified stamp): name offset,
flags (1 = zlib, 2 = directory, 4 = zstd), then either (child count, first child index) for a directory or
(territory, language, data offset) for a file. A name is (uint16 length, uint32 hash, UTF-16BE chars); a
data blob is (uint32 size, bytes); zlib blobs are ``qCompress`` output (uint32 uncompressed size + zlib
stream), zstd blobs a plain zstd frame.
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from typing import Iterator

FLAG_ZLIB, FLAG_DIR, FLAG_ZSTD = 1, 2, 4


class RccError(ValueError):
    """Not a Qt binary resource file, or a corrupt one."""


def _zstd_decompress(blob: bytes) -> bytes:
    try:
        import zstandard

        return zstandard.ZstdDecompressor().decompress(blob, max_output_size=1 << 30)
    except ImportError:  # the zstd command-line tool is as good
        return subprocess.run(["zstd", "-d", "-c", "-q"], input=blob, stdout=subprocess.PIPE, check=True).stdout


def read_rcc(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Yield ``(path, content)`` for every file in the resource tree (content decompressed)."""
    if data[:4] != b"qres":
        raise RccError("not a Qt resource file (no 'qres' magic)")
    version, tree, blobs, names = struct.unpack(">IIII", data[4:20])
    if version not in (1, 2, 3):
        raise RccError(f"unsupported rcc format version {version}")
    node_size = 14 if version == 1 else 22

    def name_at(off: int) -> str:
        (n,) = struct.unpack(">H", data[names + off: names + off + 2])
        return data[names + off + 6: names + off + 6 + 2 * n].decode("utf-16-be")

    def walk(index: int, prefix: str) -> Iterator[tuple[str, bytes]]:
        base = tree + index * node_size
        name_off, flags = struct.unpack(">IH", data[base: base + 6])
        name = "" if index == 0 else name_at(name_off)
        path = f"{prefix}/{name}" if prefix or index else name
        if flags & FLAG_DIR:
            count, first = struct.unpack(">II", data[base + 6: base + 14])
            for child in range(first, first + count):
                yield from walk(child, path)
            return
        (data_off,) = struct.unpack(">I", data[base + 10: base + 14])
        (size,) = struct.unpack(">I", data[blobs + data_off: blobs + data_off + 4])
        blob = data[blobs + data_off + 4: blobs + data_off + 4 + size]
        if flags & FLAG_ZSTD:
            blob = _zstd_decompress(blob)
        elif flags & FLAG_ZLIB:
            blob = zlib.decompress(blob[4:])
        yield path, blob

    yield from walk(0, "")
