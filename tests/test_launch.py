"""Job start-up and run state without a cluster: module boundaries, one-line errors, progress, markers."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import pytest

from colorize_core import launch, runstate
from colorize_core.config import ColorizeConfig
from colorize_core.errors import OutputError, StageError, TransientError, UserError
from colorize_core.pipeline import check_counts

LIBRARY = Path(__file__).resolve().parents[1] / "colorize_core"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_library_never_imports_jobs_and_ray_only_at_the_edges():
    for path in LIBRARY.rglob("*.py"):
        names = _imports(path)
        assert "jobs" not in names, f"{path} imports jobs"
        if "ray" in names:
            assert path.name in ("ray_adapter.py", "launch.py"), f"{path} imports ray"


def test_validation_errors_become_one_line(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        ColorizeConfig(manifest="m", output="o", inference={"batch_sise": 3})
    assert launch.one_line(info.value).startswith("unknown key 'inference.batch_sise'")
    with pytest.raises(ValidationError) as info:
        ColorizeConfig(output="o")
    assert launch.one_line(info.value) == ("missing required setting 'manifest': give --manifest or set it in "
                                           "the config file")


@pytest.mark.parametrize("exc, code", [(UserError("unknown model 'x': use one of a, b"), 1),
                                       (launch.Unfinished("2 row(s) ... rerun the same command to finish them"), 4),
                                       (TransientError("read s3://b/m.parquet: still failing after 9 tries"), 4),
                                       (OutputError("cannot write o/images/x.jpg: ...; rerun the same command"), 1)])
def test_main_wrapper_prints_one_line_and_exits(capsys, exc, code):
    def body():
        raise exc

    assert launch.main_wrapper(body) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "internal error" not in err


@pytest.mark.parametrize("exc", [RuntimeError("a bug\nsecond line"), ValueError("a bug\nsecond line"),
                                 FileNotFoundError(2, "a bug")])
def test_bugs_are_internal_errors_with_their_traceback_under_verbose(capsys, exc):
    """Not a user mistake (a bare ValueError included): one line that says so, the traceback with --verbose."""
    def body():
        raise exc

    assert launch.main_wrapper(body) == launch.EXIT_FAILED
    err = capsys.readouterr().err
    assert err == f"error: internal error in the driver: {type(exc).__name__}: {str(exc).splitlines()[0]} " \
                  f"(rerun with --verbose for the traceback)\n"
    assert launch.main_wrapper(body, verbose=True) == launch.EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" in err and "in body" in err
    assert err.splitlines()[-1].startswith(f"error: internal error in the driver: {type(exc).__name__}")


def test_a_stage_error_names_its_stage_and_keeps_the_worker_traceback(capsys):
    try:
        {}["missing"]
    except KeyError as exc:
        wrapped = StageError.wrap("ComposeStage", exc)

    def body():
        raise wrapped

    assert launch.main_wrapper(body) == launch.EXIT_FAILED
    assert capsys.readouterr().err == ("error: internal error in ComposeStage: KeyError: 'missing' (rerun with "
                                       "--verbose for the traceback)\n")
    assert launch.main_wrapper(body, verbose=True) == launch.EXIT_FAILED
    assert "{}[\"missing\"]" in capsys.readouterr().err  # the worker's own traceback


def test_library_value_mistakes_are_user_errors_not_value_errors():
    from colorize_core import storage

    assert ValueError not in launch.user_error_types()
    with pytest.raises(UserError, match="unsupported URI scheme"):
        storage.filesystem("gs://bucket/key")


def test_transient_rows_fail_the_run_with_a_rerun_hint():
    with pytest.raises(launch.Unfinished, match="rerun the same command"):
        check_counts({"ok": 3, "error": 0, "transient": 2}, 1.0)
    assert check_counts({"ok": 3, "error": 1, "transient": 0}, 0.5) == launch.EXIT_OK
    assert check_counts({"ok": 1, "error": 3, "transient": 0}, 0.5) == launch.EXIT_TOO_MANY_ERRORS


def test_a_run_where_every_row_failed_never_exits_0_and_the_default_tolerates_a_few_percent(capsys):
    assert check_counts({"ok": 0, "error": 6, "transient": 0}, 1.0) == launch.EXIT_TOO_MANY_ERRORS
    assert "every processed row failed (6/6)" in capsys.readouterr().err
    assert check_counts({"ok": 0, "error": 0, "transient": 0}, 0.1) == launch.EXIT_OK  # nothing to do
    default = ColorizeConfig(manifest="m", output="o").max_error_fraction
    assert default == 0.1
    assert check_counts({"ok": 95, "error": 5, "transient": 0}, default) == launch.EXIT_OK
    assert check_counts({"ok": 80, "error": 20, "transient": 0}, default) == launch.EXIT_TOO_MANY_ERRORS


def test_progress_on_a_non_terminal_prints_at_most_one_line_per_interval(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    bar = launch.Progress(100, 0, interval=3600)
    for _ in range(50):
        bar.update(1, 0)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "50/100" in lines[0]


def _row(image_id, status):
    return {"image_id": image_id, "status": status, "error": None if status == "ok" else "x", "model": "m",
            "width": 4, "height": 4, "psnr": 1.0, "ssim": 1.0, "rmse": 1.0, "colorfulness": 1.0,
            "deltae2000": 1.0, "seconds": 0.1, "metrics_against": None}


def test_a_shard_with_a_transient_row_gets_metrics_but_no_marker(tmp_path):
    out = str(tmp_path)
    assert not runstate.finish_shard(out, "s1", [_row("a", "ok"), _row("b", "transient")], None)
    assert (tmp_path / "metrics" / "s1.parquet").exists() and runstate.completed(out, None) == {}
    assert runstate.finish_shard(out, "s1", [_row("a", "ok"), _row("b", "ok")], None)
    assert runstate.completed(out, None) == {"s1": 2}


def test_one_current_marker_per_shard(tmp_path):
    out = str(tmp_path)
    runstate.finish_shard(out, "s1", [_row("a", "ok")], None)
    runstate.finish_shard(out, "s1", [_row("a", "ok"), _row("b", "error")], None)
    markers = sorted(p.name for p in (tmp_path / "_state" / "completions").iterdir())
    assert markers == ["s1__2.done"]
    assert json.loads((tmp_path / "_state" / "completions" / "s1__2.done").read_text())["error"] == 1
    assert runstate.is_done(runstate.completed(out, None), "s1", 1)
    assert not runstate.is_done(runstate.completed(out, None), "s1", 3)
