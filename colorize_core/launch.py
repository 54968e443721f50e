"""How every job starts and ends: shared flags, config loading, a quiet Ray, one progress bar, one-line errors.

Jobs differ only in what they compute. Each builds its parser from :func:`job_parser` and
:func:`add_pipeline_flags`, turns flags into its typed config with :func:`load_config`, and runs its body
through :func:`main_wrapper`, which ends every run that does not finish with one line on stderr: a user
mistake (:class:`~colorize_core.errors.UserError` and its kinds: a bad manifest, bad weights, an unknown name,
a config that does not validate) or an output that cannot be written
(:class:`~colorize_core.errors.OutputError`) as ``error: <what, and what to do>``, anything else as
``error: internal error in <stage>: <type>: <message>`` with the traceback under ``--verbose``; exit 1.

Ray is imported here (to start or join a cluster) and in :mod:`colorize_core.ray_adapter` only.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from .errors import OutputError, StageError, TransientError, UserError

EXIT_OK, EXIT_FAILED, EXIT_TOO_MANY_ERRORS, EXIT_UNFINISHED = 0, 1, 3, 4
PACKAGES = ("ray", "torch", "numpy", "pyarrow", "pillow", "scikit-image", "s3fs", "fsspec", "pydantic")
log = logging.getLogger("colorize")


class Unfinished(Exception):
    """Rows left unfinished by transient failures: the message says a plain rerun finishes them."""


# --------------------------------------------------------------------------------------------- flags


def job_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (flags given here override it)")
    p.add_argument("--output", help="output prefix, local or s3://")
    return p


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags of every Ray job: pool sizes, cluster, output noise."""
    p.add_argument("--limit", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int, help="inference batch size")
    p.add_argument("--num-actors", dest="num_actors", type=int, help="inference replicas")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--ray-address", dest="ray_address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--verbose", action="store_true", help="Ray's own logs and per-operator progress too")


COLORIZE_FLAGS = ("model", "weights", "temperature", "output_format", "output_depth", "visible_label", "quality",
                  "saturation", "max_pixels", "shard_rows", "limit", "max_error_fraction", "overwrite",
                  "retry_errors")


def add_colorize_flags(p: argparse.ArgumentParser) -> None:
    """The colorize job's flags (also every backfill's)."""
    from .models.registry import DEFAULT_MODEL

    p.add_argument("--model", help=f"registry name or checkpoint directory URI (default: {DEFAULT_MODEL})")
    p.add_argument("--weights", help="'official', local path, https:// or s3:// URI")
    p.add_argument("--temperature", type=float, help="ECCV16 annealed-mean temperature")
    p.add_argument("--output-format", dest="output_format", choices=["jpeg", "jpg", "png", "webp", "tiff", "tif"])
    p.add_argument("--output-depth", dest="output_depth", choices=["auto", "8", "16"],
                   help="bits per sample; auto: 16 where the source is 16-bit and the format holds it (png, tiff)")
    p.add_argument("--visible-label", dest="visible_label", action="store_true", default=None,
                   help="stamp a small 'colourised by machine' mark on access copies (never on masters)")
    p.add_argument("--quality", type=int)
    p.add_argument("--saturation", type=float)
    p.add_argument("--max-pixels", dest="max_pixels", type=int)
    p.add_argument("--shard-rows", dest="shard_rows", type=int)
    p.add_argument("--max-error-fraction", dest="max_error_fraction", type=float)
    p.add_argument("--overwrite", action="store_true", default=None, help="ignore earlier progress, redo all")
    p.add_argument("--retry-errors", dest="retry_errors", action="store_true", default=None,
                   help="try rows that earlier runs recorded as errors again")
    add_provenance_flags(p)
    add_run_flags(p)


def add_provenance_flags(p: argparse.ArgumentParser) -> None:
    """C2PA signing: the certificate chain and its key (both, or neither)."""
    p.add_argument("--c2pa-cert", dest="c2pa_cert", metavar="PEM",
                   help="sign every output with C2PA: certificate chain (PEM, signing certificate first), path or s3://")
    p.add_argument("--c2pa-key", dest="c2pa_key", metavar="PEM", help="the signing certificate's private key (PEM)")


def provenance_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {"cert": getattr(args, "c2pa_cert", None), "key": getattr(args, "c2pa_key", None)}


def inference_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {"batch_size": args.batch_size, "num_actors": args.num_actors, "precision": args.precision,
            "device": args.device}


# --------------------------------------------------------------------------------------------- config


def load_config(cls, args: argparse.Namespace, flags: dict[str, Any], defaults: dict[str, Any] | None = None):
    """``cls`` from the YAML file of ``--config`` (if any), overridden by flags that were given."""
    from .config import build, load_yaml, merge

    base = load_yaml(args.config) if getattr(args, "config", None) else {}  # its mistakes are UserErrors
    data = merge(base, flags)
    for key, value in (defaults or {}).items():
        if not data.get(key):
            data[key] = value
    return build(cls, data, source=getattr(args, "config", None))


# --------------------------------------------------------------------------------------------- Ray


def init_ray(address: str | None = None, verbose: bool = False, worker_logs: bool | None = None) -> None:
    """Start or join Ray, quietly unless ``verbose``: no token-auth notice, no C++ error-level chatter about
    actor constructor arguments, Ray Data's own progress blocks off (the job draws one bar). ``worker_logs``
    (default: ``verbose``) forwards the workers' output: the train job's per-epoch lines come from them."""
    if not verbose:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if not verbose:
            # A new local cluster gets token authentication by default (Ray 2.60), and says so at WARNING
            # level on every run; that is the setting we want, so the notice is noise.
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        with _quiet_stderr(not verbose):
            ray.init(address=address, logging_level=logging.INFO if verbose else logging.WARNING,
                     log_to_driver=verbose if worker_logs is None else worker_logs, configure_logging=True)
    quiet_ray_data(verbose)


@contextlib.contextmanager
def _quiet_stderr(enabled: bool):
    """Silence file descriptor 2 while Ray starts: its C++ core prints start-up notices there (the log level
    it read from the environment) that no Python setting reaches. Exceptions still surface afterwards."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_ray_data(verbose: bool = False) -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.enable_operator_progress_bars = verbose
    if not verbose:
        # CRITICAL, not ERROR: a failing stage makes Ray Data log the failure (and its traceback) at ERROR, and
        # the job reports it itself, in one line (main_wrapper).
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------------------------- progress


class Progress:
    """One progress bar (tqdm on a terminal); on a non-terminal one line at most every ``interval`` seconds."""

    def __init__(self, total: int, skipped: int, enabled: bool = True, label: str = "colorize",
                 interval: float = 30.0):
        self.total, self.skipped, self.enabled, self.label, self.interval = total, skipped, enabled, label, interval
        self.ok = self.error = self.transient = 0
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=skipped, desc=label, unit="img", file=sys.stderr,
                                dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, ok: int, error: int, transient: int = 0) -> None:
        self.ok += ok
        self.error += error
        self.transient += transient
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(ok + error + transient)
            self.bar.set_postfix(ok=self.ok, error=self.error, **({"transient": self.transient}
                                                                   if self.transient else {}), refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line()

    def _line(self) -> None:
        done = self.ok + self.error + self.transient
        if getattr(self, "_printed", None) == done:
            return
        self._printed = done
        rate = done / max(time.monotonic() - self.t0, 1e-9)
        extra = f"  transient {self.transient}" if self.transient else ""
        print(f"[{self.label}] {done + self.skipped}/{self.total} rows  ok {self.ok}  error {self.error}{extra}  "
              f"skipped {self.skipped}  {rate:.2f} img/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            self._line()


# --------------------------------------------------------------------------------------------- main


def user_error_types() -> tuple[type[BaseException], ...]:
    """The mistakes a user fixes, printed as one line without a traceback. Not ValueError: the library raises
    UserError (or a subclass) for a value the user gave, so a ValueError is a bug and shows as one."""
    from pydantic import ValidationError

    from .manifest import ManifestError
    from .models import WeightsError

    return UserError, ManifestError, WeightsError, ValidationError


def one_line(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        from .config import explain

        return explain(exc, None)
    from .manifest import ManifestError

    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc).strip()
    if isinstance(exc, PermissionError):
        text = f"access denied ({text.splitlines()[0] if text else type(exc).__name__}): check the credentials " \
               f"(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN or the config's storage section)"
    # A rejected manifest names each bad row on its own line; everything else is one line.
    return text if isinstance(exc, ManifestError) else (text.splitlines() or [type(exc).__name__])[0]


def unwrap(exc: BaseException) -> BaseException:
    """The exception a Ray task raised, out of the RayTaskError the driver receives (Ray Data raises the
    original, see :mod:`colorize_core.ray_adapter`)."""
    from ray.exceptions import RayTaskError

    while isinstance(exc, RayTaskError) and isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause
    return exc


def main_wrapper(body: Callable[[], int], *, verbose: bool = False) -> int:
    """Run a job's body. Whatever stops it ends with ONE line on stderr: ``error: <what, and what to do>`` for
    user mistakes and outputs that cannot be written (exit 1), unfinished rows (exit 4: a plain rerun finishes
    them), and ``error: internal error in <stage>: ...`` for an exception nobody expected (exit 1; ``--verbose``
    adds its traceback). A manifest problem may span lines (it names each bad row)."""
    import traceback

    if not verbose:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return body()
    except Exception as raised:  # noqa: BLE001 - every way a run stops is reported here, once
        exc = unwrap(raised)
        if isinstance(exc, Unfinished):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_UNFINISHED
        if isinstance(exc, TransientError):
            print(f"error: {one_line(exc)}; rerun the same command to finish the run", file=sys.stderr)
            return EXIT_UNFINISHED
        if isinstance(exc, user_error_types()) or isinstance(exc, OutputError):
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return EXIT_FAILED
        if isinstance(exc, StageError):
            where, kind, message, details = exc.stage, exc.kind, exc.message, exc.details
        else:
            where, kind, message = "the driver", type(exc).__name__, (str(exc).strip().splitlines() or [""])[0]
            details = "".join(traceback.format_exception(raised))
        if verbose:
            print(details, file=sys.stderr, end="" if details.endswith("\n") else "\n")
        hint = "" if verbose else " (rerun with --verbose for the traceback)"
        print(f"error: internal error in {where}: {kind}: {message}{hint}", file=sys.stderr)
        return EXIT_FAILED
