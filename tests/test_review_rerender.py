"""Re-rendering what was reviewed: hints saved through the review API, ``--manifest RUN/review/hints.parquet
--output RUN`` run by the colorize job, and the page showing the result. On a local run here; on the S3
server's run at the end of test_review_api (which reuses its run)."""

from __future__ import annotations

import io
import json
import shlex
import time

import numpy as np
import pytest
from PIL import Image

from colorize_core import imageio, metrics, storage
from colorize_core.config import ColorizeConfig
from jobs import colorize as job
from tests import jobkit, reviewkit
from tests.test_review_api import HINT, call, quoted

REVIEWED = ("box 1/p001", "scan/with-reference")
OTHER_HINT = {"x": 0.3, "y": 0.6, "a": -40.0, "b": -35.0}


@pytest.fixture
def reviewed_run(ray_cluster, tmp_path):
    """A fresh run of its own (the re-render changes it) and its model."""
    model = reviewkit.guided_model(str(tmp_path))
    options = storage.StorageOptions.from_env()
    output, rows = reviewkit.make_run(str(tmp_path), options, model)
    return output, rows, options, model


def _rerender(output: str, command: str, model: str, options, storage_config: dict | None) -> dict:
    """The command the page gave on save (local: run as it is, through the job's own command line; on S3 the
    storage settings come from a config instead of the environment), then the re-render's summary."""
    hints = storage.join(output, "review", "hints.parquet")
    words = shlex.split(command)
    assert words[:7] == ["python", "-m", "jobs.colorize", "--manifest", hints, "--output", output], command
    if storage_config is None:
        assert job.main([*words[3:], "--quiet"]) == job.EXIT_OK
        latest = storage.list_files(storage.join(output, "rerenders"), options, suffix="summary.json")[-1]
        return json.loads(storage.read_bytes(latest, options))
    cfg = ColorizeConfig(manifest=hints, output=output, model=model, storage=storage_config)
    return job.run(cfg, progress=False)


def _by_id(output: str, options) -> dict[str, dict]:
    table = jobkit.read_metrics(output, options)
    ids = table["image_id"].to_pylist()
    assert len(ids) == len(set(ids)), f"one metrics row per image, got {sorted(ids)}"
    return {r["image_id"]: r for r in table.to_pylist()}


def _files(output: str, options) -> dict[str, str]:
    """Every file of the run outside review/ and rerenders/, with its version."""
    skip = tuple(storage.join(output, d) + "/" for d in ("review", "rerenders"))
    return {u: v for u, v in storage.list_file_versions(output, options).items() if not u.startswith(skip)}


def _image(output: str, image_id: str, options) -> bytes:
    return storage.read_bytes(storage.join(output, "images", f"{image_id}.jpg"), options)


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def _wait_for_row(base: str, image_id: str, psnr: float, timeout: float = 20) -> dict:
    """The page's row of an image once it shows ``psnr`` (the server reads metrics again when they change)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = json.loads(call(base, "/api/images?limit=500")[2])["rows"]
        row = next(r for r in rows if r["image_id"] == image_id)
        if row["psnr"] is not None and abs(row["psnr"] - psnr) < 1e-9 or time.monotonic() > deadline:
            return row
        time.sleep(0.2)


def test_rerender_what_was_reviewed(reviewed_run):
    output, rows, options, model = reviewed_run
    exercise_rerender(output, rows, options, model, None, full=True)


def exercise_rerender(output: str, rows: list[dict], options, model: str, storage_config: dict | None, *,
                      full: bool) -> None:
    """Save hints through the API, re-render, check the run and the page; with ``full``, also a second save
    and re-render. On S3 (test_review_api's run) ``storage_config`` reaches the job."""
    sources = {r["image_id"]: r for r in rows}
    before_rows, before_files = _by_id(output, options), _files(output, options)
    before_images = {i: _image(output, i, options) for i in before_rows if i != "broken"}
    config = storage.read_bytes(storage.join(output, "config.json"), options)
    with reviewkit.serving(output, options) as srv:
        base = srv.url
        thumb = {i: call(base, f"/api/image/{quoted(i)}/output?max=48")[1]["ETag"] for i in REVIEWED}
        for image_id, hints in zip(REVIEWED, ([HINT], [HINT, OTHER_HINT])):
            status, _, body = call(base, f"/api/hints/{quoted(image_id)}", body={"hints": hints})
            assert status == 200
        command = json.loads(body)["rerender"]
        assert json.loads(call(base, "/api/run")[2])["rerender_command"] == command
        assert "--model" in command and "#" not in command, command  # the run's own model, nothing else to add
        preview = call(base, f"/api/preview/{quoted(REVIEWED[0])}", body={"hints": [HINT]})[2]

        summary = _rerender(output, command, model, options, storage_config)
        assert summary["counts"]["total"] == 2 and summary["counts"]["ok"] == 2, summary
        assert summary["superseded"] == {"rendered_again": 2, "rows_dropped": 2}, summary

        # Exactly the reviewed images: their outputs replaced, scored again; nothing else touched.
        after_rows, after_files = _by_id(output, options), _files(output, options)
        assert set(after_rows) == set(before_rows)
        for image_id in before_rows:
            if image_id not in REVIEWED:
                assert after_rows[image_id] == before_rows[image_id], image_id
                continue
            new = _image(output, image_id, options)
            assert new != before_images[image_id], f"{image_id} was rendered again with its hints"
            source = sources[image_id]
            truth = imageio.decode_image(storage.read_bytes(source["reference_uri"] or source["uri"], options)).rgb
            expected = metrics.compute_metrics(imageio.decode_image(new).rgb, imageio.to_uint8(truth))
            assert after_rows[image_id]["psnr"] == pytest.approx(expected["psnr"]), image_id
            assert after_rows[image_id]["psnr"] != before_rows[image_id]["psnr"]
        reviewed_images = {storage.join(output, "images", f"{i}.jpg") for i in REVIEWED}
        changed = {u for u, v in before_files.items() if after_files.get(u) != v}
        metrics_files = {u for u in changed if u.startswith(storage.join(output, "metrics") + "/")}
        assert changed - metrics_files == reviewed_images, "only the reviewed outputs and the run's metrics change"
        assert len(metrics_files) == 1 and set(before_files) <= set(after_files)
        added = sorted(u[len(output) + 1:] for u in set(after_files) - set(before_files))
        assert [a.split("/")[0] for a in added] == ["_state", "metrics"], added  # the re-render's marker, metrics
        assert storage.read_bytes(storage.join(output, "config.json"), options) == config, "the run's config stays"
        rerender_config = storage.list_files(storage.join(output, "rerenders"), options, suffix="config.json")
        assert len(rerender_config) == 1
        # What the preview showed is what the job rendered (same model, same hints, one colorize path; the two
        # differ by their JPEG encodings, which this tiny image of a random model's colours makes large).
        shown, new, old = (_pixels(x) for x in (preview, _image(output, REVIEWED[0], options),
                                                 before_images[REVIEWED[0]]))
        moved = np.abs(new - old).max(axis=-1) > 30  # where the hint changed the image
        to_new, to_old = np.abs(shown - new)[moved].mean(), np.abs(shown - old)[moved].mean()
        assert moved.sum() > 20 and to_new < to_old / 3, (moved.sum(), to_new, to_old)

        # The page shows the new result: the rows, the files and fresh thumbnails.
        for image_id in REVIEWED:
            row = _wait_for_row(base, image_id, after_rows[image_id]["psnr"])
            assert row["psnr"] == pytest.approx(after_rows[image_id]["psnr"]) and row["hints"] >= 1, row
            assert call(base, f"/api/image/{quoted(image_id)}/output")[2] == _image(output, image_id, options)
            assert call(base, f"/api/image/{quoted(image_id)}/output?max=48")[1]["ETag"] != thumb[image_id]
        assert json.loads(call(base, "/api/images")[2])["total"] == len(rows)

        # The same hints again: nothing to do.
        again = _rerender(output, command, model, options, storage_config)
        assert again["counts"]["skipped"] == 2 and again["counts"]["ok"] == 0, again
        assert _files(output, options) == after_files and _by_id(output, options) == after_rows

        if not full:
            return  # the rest is about the manifest, not the store
        # Hints saved again (one image changed): the manifest is new work, both rows are rendered again from it.
        first = _image(output, REVIEWED[0], options)
        assert call(base, f"/api/hints/{quoted(REVIEWED[0])}", body={"hints": [OTHER_HINT]})[0] == 200
        third = _rerender(output, command, model, options, storage_config)
        assert third["counts"]["ok"] == 2 and third["superseded"] == {"rendered_again": 2, "rows_dropped": 2}, third
        final = _by_id(output, options)
        assert set(final) == set(before_rows) and _image(output, REVIEWED[0], options) != first
        assert all(final[i] == before_rows[i] for i in before_rows if i not in REVIEWED)


def test_the_newest_row_is_current_until_the_older_is_dropped(tmp_path):
    """The rule every reader shares (runstate.current_rows over metrics_listing, oldest write first) and the
    clean-up a re-render runs (drop_superseded: only rows older than the run's own go), on files built here."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from colorize_core import runstate
    from colorize_core.review.records import ImageQuery, RunRecords
    from colorize_core.schema import METRICS_SCHEMA

    output = reviewkit.synthetic_run(tmp_path, 4, 1, jobkit.tiny_checkpoint(str(tmp_path / "ckpt")))
    original = f"{output}/metrics/m-0000000.parquet"
    ids = pq.read_table(original)["image_id"].to_pylist()
    newer = pq.read_table(original).slice(1, 1)
    newer = newer.set_column(newer.schema.get_field_index("colorfulness"), "colorfulness",
                             pa.array([99.0], pa.float64()))
    pq.write_table(newer.cast(METRICS_SCHEMA), f"{output}/metrics/hints-0000000.parquet")  # 'h' sorts first
    t = time.time()
    os.utime(original, (t - 60, t - 60))
    os.utime(f"{output}/metrics/hints-0000000.parquet", (t, t))
    options = storage.StorageOptions.from_env()
    assert [runstate.shard_of(u) for u in runstate.metrics_listing(output, options)] == ["m-0000000", "hints-0000000"]
    records = RunRecords(output, options)
    assert records.page(ImageQuery())["total"] == 4
    assert records.row(ids[1])["colorfulness"] == 99.0, "the newer file's row is the current one"
    # A rerun of the original manifest drops nothing: its file is the older one.
    assert runstate.drop_superseded(output, options, {"m-0000000"}, written=set()) == 0
    # The re-render's clean-up (even resumed after a crash: nothing written now) drops the older row.
    assert runstate.drop_superseded(output, options, {"hints-0000000"}, written=set()) == 1
    assert pq.read_table(original)["image_id"].to_pylist() == [i for i in ids if i != ids[1]]
    assert runstate.drop_superseded(output, options, {"hints-0000000"}, written=set()) == 0, "idempotent"
