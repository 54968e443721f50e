"""The review API without a browser, on a real run (local and on the S3 server) of a model that reads hints."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from colorize_core import color, storage
from colorize_core import manifest as manifest_mod
from colorize_core.review import records as records_mod
from colorize_core.review.server import PREVIEWER
from colorize_core.schema import FIXITY_COLUMNS, METRICS_SCHEMA
from tests import jobkit, reviewkit

HINT = {"x": 0.5, "y": 0.5, "a": 60.0, "b": 45.0}


def call(base: str, path: str, *, body=None, method: str | None = None, headers: dict | None = None,
         raw: bytes | None = None, timeout: float = 120):
    """(status, headers, body bytes); ``path`` is sent exactly as given (no normalisation, no re-encoding)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(base + path, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def quoted(image_id: str) -> str:
    return urllib.parse.quote(image_id, safe="")


def listing(output: str, options) -> dict[str, str]:
    """Every file of the run outside review/, with its version."""
    review = storage.join(output, "review") + "/"
    return {u: v for u, v in storage.list_file_versions(output, options).items() if not u.startswith(review)}


@pytest.fixture(scope="module")
def local_run(ray_cluster, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("review-local"))
    options = storage.StorageOptions.from_env()
    output, rows = reviewkit.make_run(root, options, reviewkit.guided_model(root))
    return output, rows, options


@pytest.fixture(scope="module")
def s3_run(ray_cluster, s3_server, tmp_path_factory):
    prefix = f"s3://{s3_server.bucket}/review-{time.time_ns()}"
    model = reviewkit.guided_model(str(tmp_path_factory.mktemp("review-s3-model")))
    storage_config = {"endpoint_url": s3_server.endpoint_url, "region": s3_server.region,
                      "access_key_id": s3_server.key, "secret_access_key": s3_server.secret}
    output, rows = reviewkit.make_run(prefix, s3_server.options, model, storage_config)
    return output, rows, s3_server.options


@pytest.fixture(params=[pytest.param("local", marks=pytest.mark.integration),
                        pytest.param("s3", marks=pytest.mark.integration)])
def run(request):
    return request.getfixturevalue(f"{request.param}_run")


@pytest.fixture
def served(run):
    output, rows, options = run
    with reviewkit.serving(output, options) as srv:
        yield srv.url, output, rows, options


def test_grid_pages_sorts_and_filters_the_run(served):
    base, output, rows, options = served
    status, _, body = call(base, "/api/images?limit=2")
    page = json.loads(body)
    assert status == 200 and page["total"] == len(rows) and len(page["rows"]) == 2
    assert page["counts"] == {"ok": 4, "error": 1, "transient": 0, "all": 5}
    everything = json.loads(call(base, "/api/images?limit=500")[2])["rows"]
    assert sorted(r["image_id"] for r in everything) == sorted(r["image_id"] for r in rows)
    broken = next(r for r in everything if r["image_id"] == "broken")
    assert broken["status"] == "error" and broken["error"], broken

    by_psnr = json.loads(call(base, "/api/images?sort=psnr&order=desc")[2])["rows"]
    values = [r["psnr"] for r in by_psnr]
    scored = [v for v in values if v is not None]
    assert scored == sorted(scored, reverse=True) and len(scored) == 4  # 3 colour inputs + the reference row
    assert values[len(scored):] == [None] * (len(values) - len(scored)), "rows without the metric come last"
    reference = next(r for r in by_psnr if r["image_id"] == "scan/with-reference")
    assert reference["metrics_against"] == "reference_uri" and reference["ssim"] is not None

    errors = json.loads(call(base, "/api/images?status=error")[2])
    assert errors["total"] == 1 and errors["rows"][0]["image_id"] == "broken"
    cut = sorted(scored)[1]
    high = json.loads(call(base, f"/api/images?psnr_min={cut}")[2])
    assert high["total"] == 3 and all(r["psnr"] >= cut for r in high["rows"])
    second = json.loads(call(base, "/api/images?offset=1&limit=1")[2])["rows"]
    assert second[0]["image_id"] == sorted(r["image_id"] for r in rows)[1]

    for bad in ("sort=uri", "order=up", "status=fine", "limit=0", "limit=100000", "offset=-1", "psnr_min=high",
                "colour=1"):
        status, _, body = call(base, f"/api/images?{bad}")
        assert status == 400 and json.loads(body)["error"], bad


def test_images_thumbnails_and_what_is_written(served):
    base, output, rows, options = served
    before = listing(output, options)
    image_id = "box 1/p001"
    status, headers, body = call(base, f"/api/image/{quoted(image_id)}/output")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert body == storage.read_bytes(storage.join(output, "images", f"{image_id}.jpg"), options)
    status, headers, body = call(base, f"/api/image/{quoted(image_id)}/input")
    assert status == 200 and body == storage.read_bytes(rows[0]["uri"], options)

    status, headers, thumb = call(base, f"/api/image/{quoted(image_id)}/output?max=48")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb)).size) == 48
    cached = storage.list_files(storage.join(output, "review", "thumbs"), options)
    assert len(cached) == 1 and cached[0].rsplit("/", 1)[-1] == headers["ETag"].strip('"') + ".jpg"
    assert "p001" not in cached[0] and "box" not in cached[0].split("/review/")[1]
    status, _, _ = call(base, f"/api/image/{quoted(image_id)}/output?max=48", headers={"If-None-Match": headers["ETag"]})
    assert status == 304
    # The cached thumbnail is what is served (the file in RUN/review/thumbs/), not made again.
    storage.write_bytes(cached[0], thumb + b"", options)
    assert call(base, f"/api/image/{quoted(image_id)}/output?max=48")[2] == thumb

    status, _, thumb = call(base, f"/api/image/{quoted('scan/with-reference')}/input?max=32")
    assert status == 200 and max(Image.open(io.BytesIO(thumb)).size) == 32
    assert call(base, "/api/image/broken/output")[0] == 404, "an error row has no output"
    assert call(base, "/api/image/broken/input?max=64")[0] == 422, "its input does not decode"
    for bad in ("max=8", "max=99999", "max=big"):
        assert call(base, f"/api/image/{quoted(image_id)}/output?{bad}")[0] == 400, bad
    status, _, body = call(base, f"/api/image/{quoted(image_id)}/sample?x=0.5&y=0.5")
    point = json.loads(body)
    assert status == 200 and 0 <= point["l"] <= 100 and point["a"] is not None
    assert call(base, f"/api/image/{quoted(image_id)}/sample?x=2&y=0.5")[0] == 400
    assert listing(output, options) == before, "nothing outside RUN/review/ is written"


TRAVERSALS = ["../config.json", "..%2Fconfig.json", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "/etc/passwd",
              "box%201%2F..%2Fbroken", "box%201/../broken", "box%201", "box%201%2F", "%2E%2E%2Fsummary.json",
              "images%2Fbroken", "BROKEN", "broken%00", "not-in-this-run"]


def test_ids_are_looked_up_never_joined(served):
    base, output, rows, options = served
    before = listing(output, options)
    for image_id in ("box 1/p001", "café"):  # '/' encoded or not, UTF-8 percent-encoded: the same image
        assert call(base, f"/api/image/{quoted(image_id)}/output")[0] == 200
    assert call(base, "/api/image/box%201/p001/output")[0] == 200
    for bad in TRAVERSALS:
        for path in (f"/api/image/{bad}/input", f"/api/image/{bad}/output", f"/api/image/{bad}/output?max=64",
                     f"/api/image/{bad}/sample?x=0.5&y=0.5", f"/api/hints/{bad}"):
            status, _, body = call(base, path)
            assert status == 404, (path, status, body[:200])
        for path in (f"/api/hints/{bad}", f"/api/preview/{bad}"):
            status, _, body = call(base, path, body={"hints": [HINT]})
            assert status == 404, (path, status, body[:200])
    assert not storage.exists(storage.join(output, "review", "hints.parquet"), options)
    assert listing(output, options) == before


def test_hint_bodies_are_checked(served):
    base, *_ = served
    path = f"/api/preview/{quoted('box 1/p001')}"
    bad_bodies = [b"not json", b"[]", b'{"hints": 3}', b'{"points": []}', b'{"hints": [], "extra": 1}',
                  b'{"hints": [{"x": 1.5, "y": 0.5, "a": 0, "b": 0}]}',
                  b'{"hints": [{"x": 0.5, "y": -0.01, "a": 0, "b": 0}]}',
                  b'{"hints": [{"x": 0.5, "y": 0.5, "a": "20", "b": 0}]}',
                  b'{"hints": [{"x": 0.5, "y": 0.5, "a": NaN, "b": 0}]}',
                  b'{"hints": [{"x": 0.5, "y": 0.5, "a": Infinity, "b": 0}]}',
                  b'{"hints": [{"x": 0.5, "y": 0.5, "a": 200, "b": 0}]}',
                  b'{"hints": [{"x": 0.5, "y": 0.5, "a": 0}]}',
                  b'{"hints": [{"x": 0.5, "y": 0.5, "a": 0, "b": 0, "l": 50}]}',
                  json.dumps({"hints": [HINT] * (records_mod.MAX_HINTS + 1)}).encode()]
    for raw in bad_bodies:
        for endpoint in (path, path.replace("/preview/", "/hints/")):
            status, _, body = call(base, endpoint, raw=raw)
            assert status == 400 and json.loads(body)["error"], (raw[:60], status, body[:200])
    assert call(base, path, raw=json.dumps({"hints": []}).encode(), headers={"Content-Type": "text/plain"})[0] == 415
    assert call(base, "/api/run", headers={"Host": "attacker.example:80"})[0] == 421, "DNS rebinding"
    assert call(base, "/api/run", headers={"Host": "localhost:1"})[0] == 200


def _pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)


def test_preview_follows_the_hints_and_concurrent_previews_are_safe(served):
    base, output, rows, options = served
    path = f"/api/preview/{quoted('box 1/p001')}"
    hint_sets = [[], [HINT], [{**HINT, "a": -50.0, "b": -40.0}], [HINT, {"x": 0.1, "y": 0.9, "a": -30, "b": 60}]]
    sequential = []
    for hints in hint_sets:
        status, headers, body = call(base, path, body={"hints": hints})
        assert status == 200 and headers["Content-Type"] == "image/jpeg", body[:200]
        sequential.append(body)
    plain = _pixels(sequential[0])
    assert plain.shape == (72, 96, 3), "the preview has the image's geometry (under the preview size)"
    for other in sequential[1:]:
        assert np.abs(_pixels(other) - plain).max() > 10, "a hint changes the preview"
    # The same hints give the same preview; several at once give each its own answer.
    assert call(base, path, body={"hints": [HINT]})[2] == sequential[1]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: call(base, path, body={"hints": hint_sets[i % 4]}), range(12)))
    for i, (status, _, body) in enumerate(answers):
        assert status == 200 and body == sequential[i % 4], i


def test_the_event_loop_never_waits_for_the_model(local_run):
    output, rows, options = local_run
    with reviewkit.serving(output, options) as srv:
        assert call(srv.url, "/api/run")[0] == 200  # the model is loaded
        result = {}

        def preview():
            result["preview"] = call(srv.url, f"/api/preview/{quoted('café')}", body={"hints": [HINT]})

        # While the model is busy (held here), a preview waits for it and the grid still answers.
        with srv.app[PREVIEWER]._model_lock:
            thread = threading.Thread(target=preview)
            thread.start()
            time.sleep(0.5)
            t0 = time.monotonic()
            status, _, _ = call(srv.url, "/api/images", timeout=20)
            assert status == 200 and time.monotonic() - t0 < 10
            assert call(srv.url, f"/api/image/{quoted('café')}/output?max=64", timeout=20)[0] == 200
            assert "preview" not in result, "the preview waits for the model"
        thread.join(120)
        assert result["preview"][0] == 200


def test_saved_hints_are_a_manifest_the_job_accepts(served):
    base, output, rows, options = served
    first = [HINT, {"x": 0.25, "y": 0.75, "a": -20.5, "b": 30.25}]
    status, _, body = call(base, f"/api/hints/{quoted('scan/with-reference')}", body={"hints": first})
    assert status == 200 and json.loads(body)["hints"] == 2
    assert call(base, f"/api/hints/{quoted('box 1/p002')}", body={"hints": [HINT]})[0] == 200
    assert call(base, f"/api/hints/{quoted('box 1/p002')}", body={"hints": []})[0] == 200  # replaced, kept empty
    hints_uri = storage.join(output, "review", "hints.parquet")
    table = storage.read_parquet_table(hints_uri, options)
    assert table.column_names == ["image_id", "uri", "hints", "reference_uri"]
    saved = {r["image_id"]: r for r in table.to_pylist()}
    by_id = {r["image_id"]: r for r in rows}
    assert set(saved) == {"scan/with-reference", "box 1/p002"}
    assert saved["scan/with-reference"]["hints"] == first
    assert saved["scan/with-reference"]["uri"] == by_id["scan/with-reference"]["uri"]
    assert saved["scan/with-reference"]["reference_uri"] == by_id["scan/with-reference"]["reference_uri"]
    assert saved["box 1/p002"]["hints"] == [] and saved["box 1/p002"]["reference_uri"] is None
    # The colorize job takes it as it is: its own validation, against the run's output.
    info = manifest_mod.validate(hints_uri, options, output=output, output_format="jpeg")
    assert info.num_rows == 2 and "hints" in info.columns
    got = json.loads(call(base, f"/api/hints/{quoted('scan/with-reference')}")[2])
    assert got == {"image_id": "scan/with-reference", "hints": first, "saved": True}
    assert json.loads(call(base, "/api/hints/broken")[2]) == {"image_id": "broken", "hints": [], "saved": False}
    reviewed = json.loads(call(base, "/api/images?reviewed=true")[2])["rows"]
    assert {r["image_id"]: r["hints"] for r in reviewed} == {"scan/with-reference": 2, "box 1/p002": 0}
    assert json.loads(call(base, "/api/images?reviewed=false")[2])["total"] == 3
    # A second server over the same run reads what the first saved.
    with reviewkit.serving(output, options) as again:
        assert json.loads(call(again.url, f"/api/hints/{quoted('scan/with-reference')}")[2])["hints"] == first
    storage.remove(storage.join(output, "review"), options)


def test_run_info_and_gamut(served):
    base, output, rows, options = served
    info = json.loads(call(base, "/api/run")[2])
    assert info["preview"]["available"] and info["preview"]["accepts_hints"]
    assert info["has_references"] and info["counts"]["all"] == len(rows)
    assert info["hint_radius"] == 2 and info["output_format"] == "jpeg"
    assert "secret" not in json.dumps(info).lower()
    status, headers, body = call(base, "/api/gamut?l=60")
    assert status == 200 and headers["Content-Type"] == "image/png"
    rgba = np.asarray(Image.open(io.BytesIO(body)))
    assert rgba.shape == (256, 256, 4)
    inside = rgba[..., 3] == 255
    assert 0.05 < inside.mean() < 0.9, "part of the ab plane is out of sRGB's gamut at L=60"
    # An opaque pixel shows the Lab colour it stands for.
    j, i = np.argwhere(inside)[len(np.argwhere(inside)) // 2]
    a, b = -110 + 220 * (i + 0.5) / 256, 110 - 220 * (j + 0.5) / 256
    expected = color.lab_to_srgb_uint8(np.array([[60.0, a, b]], np.float32))[0]
    assert np.abs(rgba[j, i, :3].astype(int) - expected).max() <= 1
    for bad in ("l=101", "l=-1", "l=dark"):
        assert call(base, f"/api/gamut?{bad}")[0] == 400


# --------------------------------------------------------------------------------------------- no model run


def _first_page(output: str) -> tuple[float, float, dict]:
    records = records_mod.RunRecords(output, storage.StorageOptions.from_env())
    q = records_mod.ImageQuery(sort="psnr", order="desc", limit=48)
    t0 = time.perf_counter()
    page = records.page(q)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    records.page(q)
    return cold, time.perf_counter() - t0, page


def test_first_page_of_a_10000_row_run(tmp_path, capsys):
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    big = reviewkit.synthetic_run(tmp_path / "big", 10_000, 10, model)
    small = reviewkit.synthetic_run(tmp_path / "small", 10, 1, model)
    cold, warm, page = _first_page(big)
    cold10, warm10, _ = _first_page(small)
    with capsys.disabled():
        print(f"\nfirst page (sort psnr desc, 48 rows): 10,000 rows cold {cold * 1000:.1f} ms, warm "
              f"{warm * 1000:.1f} ms; 10 rows cold {cold10 * 1000:.1f} ms, warm {warm10 * 1000:.1f} ms")
    assert cold < 5.0 and warm < 1.0, (cold, warm)
    table = pq.read_table(Path(big) / "metrics")
    expected = sorted((r for r in table.to_pylist() if r["psnr"] is not None), key=lambda r: -r["psnr"])[:48]
    assert [r["image_id"] for r in page["rows"]] == [r["image_id"] for r in expected]
    assert page["total"] == 10_000 and page["counts"]["all"] == 10_000
    # Through HTTP as well, and every row once over the pages.
    with reviewkit.serving(big, storage.StorageOptions.from_env()) as srv:
        base = srv.url
        t0 = time.perf_counter()
        status, _, body = call(base, "/api/images?sort=psnr&order=desc&limit=48")
        assert status == 200 and time.perf_counter() - t0 < 5.0
        seen = []
        for offset in range(0, 10_000, 500):
            seen += [r["image_id"] for r in json.loads(call(base, f"/api/images?offset={offset}&limit=500")[2])["rows"]]
        assert seen == sorted(table["image_id"].to_pylist())
        errors = json.loads(call(base, "/api/images?status=error&limit=1")[2])
        assert errors["total"] == table["status"].to_pylist().count("error")


def test_a_run_changed_on_disk_is_read_again(tmp_path):
    output = reviewkit.synthetic_run(tmp_path, 20, 2, jobkit.tiny_checkpoint(str(tmp_path / "ckpt")))
    records = records_mod.RunRecords(output, storage.StorageOptions.from_env(), refresh_s=0)
    assert records.page(records_mod.ImageQuery())["total"] == 20
    extra = pa.table({"image_id": ["new/one"], "status": ["ok"], "error": [None], "model": ["m"], "width": [1],
                      "height": [1], "psnr": [None], "ssim": [None], "rmse": [None], "colorfulness": [3.0],
                      "deltae2000": [None], "seconds": [0.1], "metrics_against": [None],
                      **{c: [None] for c in FIXITY_COLUMNS}}, schema=METRICS_SCHEMA)
    pq.write_table(extra, Path(output) / "metrics" / "later.parquet")
    assert records.page(records_mod.ImageQuery())["total"] == 21
    assert records.row("new/one")["colorfulness"] == 3.0
    # Two rows for one image (an interrupted rewrite): one is shown, the later file's.
    again = extra.set_column(extra.schema.get_field_index("colorfulness"), "colorfulness", pa.array([7.0]))
    pq.write_table(again, Path(output) / "metrics" / "z-rewrite.parquet")
    page = records.page(records_mod.ImageQuery(limit=500))
    assert page["total"] == 21 and [r["image_id"] for r in page["rows"]].count("new/one") == 1
    assert records.row("new/one")["colorfulness"] == 7.0


def test_previews_refuse_weights_that_are_not_the_runs(tmp_path):
    output = reviewkit.synthetic_run(tmp_path, 5, 1, jobkit.tiny_checkpoint(str(tmp_path / "ckpt")), weights_sha256="0" * 64)
    with reviewkit.serving(output, storage.StorageOptions.from_env()) as srv:
        base = srv.url
        info = json.loads(call(base, "/api/run")[2])
        assert not info["preview"]["available"] and "not the run's" in info["preview"]["reason"]
        status, _, body = call(base, f"/api/preview/{quoted('box000/scan000001')}", body={"hints": []})
        assert status == 503 and "not the run's" in json.loads(body)["error"]
        assert json.loads(call(base, "/api/images")[2])["total"] == 5, "the grid works without the model"
        status, _, body = call(base, f"/api/image/{quoted('box000/scan000001')}/input")
        assert status == 404 and "missing object" in json.loads(body)["error"]


def test_cli_refuses_what_is_not_a_run(tmp_path, capsys):
    from colorize_core import cli

    assert cli.main(["review", "--output", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "config.json" in err and "Traceback" not in err


def test_wrong_credentials_are_one_line(s3_run):
    import dataclasses

    from colorize_core.errors import UserError

    output, _, options = s3_run
    with pytest.raises(UserError, match="access denied"):
        records_mod.RunRecords(output, dataclasses.replace(options, secret="not-the-secret"))


def test_rerender_on_s3(s3_run, s3_server):
    """The re-render loop on the S3 run (last in this module: it changes the run the tests above read)."""
    from tests.test_review_rerender import exercise_rerender

    output, rows, options = s3_run
    model = json.loads(storage.read_bytes(storage.join(output, "config.json"), options))["model"]
    config = {"endpoint_url": s3_server.endpoint_url, "region": s3_server.region,
              "access_key_id": s3_server.key, "secret_access_key": s3_server.secret}
    exercise_rerender(output, rows, options, model, config, full=False)
