"""CPU cost of the archival outputs per image: metadata handling, fixity hashes, colour management and C2PA
signing, against the job's own CPU stages on the same images. One run; prints a table, not a test.

Inputs are the throughput bench's archive-like gray JPEGs (bench/throughput.py: 0.25 to 3.75 MP, 1.7 MP mean),
each given what an archive's scan carries: EXIF (Artist, Copyright, ImageDescription, DateTimeOriginal,
Orientation), an XMP packet (dc:identifier, dc:title), IPTC-IIM, an sRGB profile and 600 dpi. For each output
format it measures, in CPU time of this process (``time.process_time``, all threads, one image at a time):

* metadata: :func:`metadata.read_metadata` of the source plus :func:`metadata.write` into the encoded output
  (our XMP merged into the source's, EXIF/IPTC/ICC/dpi written): what must stay under 5 % of the job's CPU;
* fixity: sha256 of the source and of the output;
* C2PA: :func:`provenance.sign_output` with a P-256 key and a CA made for the run (the source as ingredient);
* colour management: decoding the same gray JPEG with a Gray Gamma 2.2 profile, minus without one.

The job's CPU per image is bench/throughput.py's per-stage cost (reduced decode + L, full decode, compose,
finish (encode, metadata, unsigned) + write + read-back, score; one core, the bundled ``compact`` model;
inference excluded, so the share printed is an upper bound) times the images' mean megapixels.

    python bench/archival.py               # 20 images
    python bench/archival.py --images 10   # a functional check
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import SIZE_CLASSES_MP, cpu_description, make_images, stage_costs  # noqa: E402
from colorize_core import fixity, imageio, metadata, provenance  # noqa: E402
from colorize_core.models import load_model  # noqa: E402
from tests import c2pacerts  # noqa: E402 - the tests' CA and leaf maker: one home for making certificates
from tests.iccfixtures import gray_gamma22  # noqa: E402 - and for building ICC profiles

FORMATS = ("jpeg", "png", "webp", "tiff")

_XMP = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
        b'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:identifier>INV-1931-042</dc:identifier><dc:title>'
        b'<rdf:Alt><rdf:li xml:lang="x-default">Market day</rdf:li></rdf:Alt></dc:title></rdf:Description>'
        b'</rdf:RDF></x:xmpmeta><?xpacket end="w"?>')
_IIM = b"\x1c\x02\x05\x00\x0aMarket day\x1c\x02\x78\x00\x0eA caption here"


def _exif() -> bytes:
    ex = Image.Exif()
    ex[0x013B], ex[0x8298], ex[0x010E], ex[0x0112] = "Ann Artist", "(c) City Archive", "Main Street", 1
    ex.get_ifd(0x8769)[0x9003] = "1931:05:04 10:00:00"
    return ex.tobytes()[6:]


def archive_copy(path: Path) -> bytes:
    """The bench image with an archive's metadata blocks (written by our own writer: any JPEG holding
    them does for a cost measurement)."""
    meta = metadata.SourceMetadata(exif=_exif(), iptc=_IIM, xmp=_XMP, dpi=(600.0, 600.0))
    record = metadata.Derivation("scanner", "0" * 64, "none", "0" * 64, "1931-05-04T10:00:00Z")
    return metadata.write(path.read_bytes(), "jpeg", meta, record).data


def _signer() -> provenance.LocalPemSigner:
    ca = c2pacerts.root_ca()
    leaf = c2pacerts.leaf(ca)
    signer = provenance.LocalPemSigner(leaf.cert_pem + ca.cert_pem, leaf.key_pem, description="bench leaf")
    provenance.check_signer(signer)
    return signer


def _cpu_ms(fn) -> tuple[float, object]:
    t0 = time.process_time()
    out = fn()
    return 1000 * (time.process_time() - t0), out


def measure(sources: list[bytes], signer) -> dict[str, dict[str, list[float]]]:
    """CPU ms per image of each archival step, per output format."""
    out: dict[str, dict[str, list[float]]] = {f: {"metadata": [], "fixity": [], "c2pa": []} for f in FORMATS}
    for i, src in enumerate(sources):
        decoded = imageio.decode_image(src)
        record = metadata.Derivation(f"s3://archive/scans/{i}.jpg", fixity.sha256_hex(src), "compact", "1" * 64,
                                     "2026-05-04T10:00:00Z", source_format="JPEG")
        for fmt in FORMATS:
            encoded = imageio.encode_image(decoded.rgb, fmt)
            ms_meta, written = _cpu_ms(lambda: metadata.write(encoded, fmt, metadata.read_metadata(src), record))
            ms_sign, signed = _cpu_ms(lambda: provenance.sign_output(written.data, fmt, signer, record, source=src,
                                                                     source_format="JPEG"))
            ms_hash, _ = _cpu_ms(lambda: (fixity.sha256_hex(src), fixity.sha256_hex(signed)))
            out[fmt]["metadata"].append(ms_meta)
            out[fmt]["c2pa"].append(ms_sign)
            out[fmt]["fixity"].append(ms_hash)
    return out


def colour_management(paths: list[Path], profile: bytes) -> list[float]:
    """Extra decode CPU ms per image for a Gray Gamma 2.2 source over the same pixels without a profile."""
    extra = []
    for p in paths:
        im = Image.open(p)
        with_profile = io.BytesIO()
        im.save(with_profile, "JPEG", quality=95, icc_profile=profile)
        without = io.BytesIO()
        im.save(without, "JPEG", quality=95)
        ms_with, _ = _cpu_ms(lambda: imageio.decode_image(with_profile.getvalue()))
        ms_without, _ = _cpu_ms(lambda: imageio.decode_image(without.getvalue()))
        extra.append(ms_with - ms_without)
    return extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20, help="distinct images (cycled through the size classes)")
    args = ap.parse_args()
    print(cpu_description(), flush=True)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp / "in", args.images)
        mps = [np.prod(Image.open(p).size) / 1e6 for p in paths]
        module, info = load_model("compact")
        module.eval()
        costs = stage_costs(paths, module, info.preprocessing, tmp / "stages")
        job_ms = costs["all CPU stages"] * float(np.mean(mps))
        sources = [archive_copy(p) for p in paths]
        signer = _signer()
        measure(sources[:1], signer)  # warm-up: imports, the c2pa library, caches
        results = measure(sources, signer)
        cms = colour_management(paths, gray_gamma22())
    print(f"{len(paths)} gray JPEGs, {min(SIZE_CLASSES_MP)}-{max(SIZE_CLASSES_MP)} MP, mean {np.mean(mps):.2f} MP, "
          f"each with EXIF, XMP, IPTC-IIM, sRGB ICC, 600 dpi; job CPU stages {costs['all CPU stages']:.1f} ms/MP "
          f"= {job_ms:.0f} ms per image (jpeg output, one core, inference excluded)")
    print()
    print("| CPU ms per image (mean, median) | " + " | ".join(FORMATS) + " |")
    print("|---|" + "---|" * len(FORMATS))
    for step, label in (("metadata", "metadata read + write"), ("fixity", "sha256 of source and output"),
                        ("c2pa", "C2PA signing")):
        cells = [f"{statistics.mean(results[f][step]):.2f} ({statistics.median(results[f][step]):.2f})"
                 for f in FORMATS]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for step, label in (("metadata", "metadata / job CPU stages"), ("c2pa", "C2PA signing / job CPU stages")):
        share = [100 * statistics.mean(results[f][step]) / job_ms for f in FORMATS]
        print(f"| {label} | " + " | ".join(f"{s:.2f} %" for s in share) + " |")
    print()
    print(f"colour management (Gray Gamma 2.2 source, extra decode CPU): mean {statistics.mean(cms):.1f} ms, "
          f"median {statistics.median(cms):.1f} ms per image")


if __name__ == "__main__":
    main()
