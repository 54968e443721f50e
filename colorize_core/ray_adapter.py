"""The one place that turns per-batch stages into Ray Data operators.

CPU stages run as Ray tasks (stateless, cheap setup); the inference stage runs in an actor pool, one
model replica per actor, with one GPU each when the cluster has GPUs. Resource defaults come from the
cluster so the same command fits a laptop and a GPU cluster. Evaluation chains one actor pool per model
(``build_dataset`` with several inference stages); ``plan_resources(..., pools=k)`` shares the cluster
between them.

Failures: a stage turns what is about a row's input into that row's result and raises everything else
(:mod:`colorize_core.stages`). What it raises stops the run at once, and reaches the driver as itself:
:data:`FAIL_FAST` pins Ray Data to no retries of application errors, no tolerated failed blocks, and the
original exception rather than Ray's wrapper. An exception nobody expected becomes a
:class:`~colorize_core.errors.StageError` naming the stage, with the worker's traceback. (Ray still retries
a task whose worker died: that is a system failure, and re-running a batch is idempotent.)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import ray
from ray.data.extensions import ArrowTensorArray

from .config import ColorizeConfig
from .errors import OutputError, StageError, TransientError, UserError, is_transient
from .schema import BATCH_TYPES

# Ray Data settings under which a stage's exception fails the dataset at once, as itself (see the module doc).
FAIL_FAST = {"max_errored_blocks": 0, "raise_original_map_exception": True, "actor_task_retry_on_errors": False,
             "retried_map_errors": False, "max_map_retries": 0}

# Test-only fault hook: with COLORIZE_TEST_FAULT=<stage class name> set on the driver when a dataset is built,
# that stage raises RuntimeError in every batch it is given, inside Ray Data, exactly where a bug in it would;
# <stage class name>.setup makes its setup() raise instead (tests/test_failures_job.py). Unset, nothing changes.
FAULT_ENV = "COLORIZE_TEST_FAULT"


def _fault(stage) -> str:
    """'call', 'setup' or '' for ``stage``, from :data:`FAULT_ENV` (read on the driver)."""
    wanted, name = os.environ.get(FAULT_ENV, ""), type(stage).__name__
    return "call" if wanted == name else "setup" if wanted == f"{name}.setup" else ""


def _setup(stage, fault: str) -> StageError | None:
    """Set ``stage`` up; what its setup raised, as a StageError (None when it succeeded)."""
    try:
        if fault == "setup":
            raise RuntimeError(f"fault injected by {FAULT_ENV}={type(stage).__name__}.setup")
        stage.setup()
    except Exception as exc:
        return StageError.wrap(f"{type(stage).__name__}.setup", exc)
    return None


def _call(stage, batch, fault: str):
    """A stage on one batch, as a block (see :func:`_apply`)."""
    return to_block(_apply(stage, batch, fault))


def _apply(stage, batch, fault: str):
    """A stage on one batch. What it raises leaves as itself when it is an expected kind (an output that cannot
    be written, a persisting transient failure, a user's mistake), else as a StageError."""
    name = type(stage).__name__
    try:
        if fault == "call":
            raise RuntimeError(f"fault injected by {FAULT_ENV}={name}")
        return stage(batch)
    except (OutputError, TransientError, StageError, UserError):
        raise
    except Exception as exc:
        if is_transient(exc):
            raise TransientError(f"{name}: {type(exc).__name__}: {exc}") from exc
        raise StageError.wrap(name, exc) from None


def _cell(value: Any, type_: pa.DataType) -> Any:
    """One object cell as Arrow takes it: NaN/None/'' placeholders of a string become null."""
    if pa.types.is_string(type_):
        return value if isinstance(value, str) else None
    if isinstance(value, float) and math.isnan(value):  # Ray's placeholder for a null object cell
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def to_block(batch: dict[str, np.ndarray]) -> pa.Table:
    """A stage's dict batch as an Arrow block of the declared schema (see colorize_core/schema.py).

    Ray would infer each column's type from its values, and an all-null string column of one block
    would not merge with the strings of another; here the type never depends on the values."""
    columns = {}
    for name, arr in batch.items():
        arr = np.asarray(arr)
        declared = BATCH_TYPES.get(name)
        if declared is not None:
            values = [_cell(v, declared) for v in arr] if arr.dtype == object else arr
            columns[name] = pa.array(values, type=declared)
        elif arr.dtype == object:
            raise TypeError(f"stage column {name!r} holds Python objects but has no declared type; "
                            "declare it in colorize_core/schema.py")
        elif arr.ndim == 1:
            columns[name] = pa.array(arr)
        else:
            columns[name] = ArrowTensorArray.from_numpy(np.ascontiguousarray(arr))
    return pa.table(columns)


def _run_cpu_stage(batch, stage, fault: str = ""):
    """Task body. CPU stages have trivial setup, so each task sets its (deserialised) copy up."""
    error = _setup(stage, fault)
    if error is not None:
        raise error
    return _call(stage, batch, fault)


def keep_freed_memory() -> bool:
    """glibc's allocator in this process keeps freed memory for reuse: buffers up to 32 MiB (the most it
    allows) come from the heap and up to 1 GiB of free heap stays mapped, rather than fresh pages being mapped,
    faulted in and zeroed by the kernel for every full-resolution buffer of every image and handed back after
    it (its default adapts the first threshold only as large blocks are freed, and trims above twice it):
    +8% images/s on the fused layout, bench/throughput.py. A long-lived actor's memory then stays at its
    peak. False where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(mallopt(opt, value) == 1 for opt, value in ((m_mmap_threshold, 32 << 20),
                                                            (m_trim_threshold, 1 << 30), (m_top_pad, 64 << 20)))


class _ActorStage:
    """Actor body: holds set-up stages (a model replica; on fused layouts expand -> decode -> inference ->
    compose) for its lifetime, and runs them one after another on each batch in this process: only the last
    one's output becomes a block.

    ``chunk_rows`` (fused): the first stage (the expansion) turns a piece of a shard into its rows, and the
    others run on them ``chunk_rows`` at a time (the inference batch), each chunk's output yielded as it is
    done, so full-resolution images of one chunk at a time are held.

    A setup that fails (weights the worker cannot read, no GPU memory) is raised from the first batch, not
    from here: an exception in an actor's constructor reaches the driver as an ActorDiedError that carries
    only text, one raised by a task arrives as itself (and names the stage)."""

    def __init__(self, stages: Sequence[Any], faults: Sequence[str], chunk_rows: int = 0):
        self.stages, self.faults, self.chunk_rows = tuple(stages), tuple(faults), chunk_rows
        keep_freed_memory()
        self.setup_error = next((e for e in map(_setup, self.stages, self.faults) if e is not None), None)

    def __call__(self, batch):
        if self.setup_error is not None:
            raise self.setup_error
        steps = list(zip(self.stages, self.faults))
        if self.chunk_rows:
            (first, fault), steps = steps[0], steps[1:]
            rows = _apply(first, batch, fault)
            n = len(next(iter(rows.values()))) if rows else 0
            chunks = [{k: v[i: i + self.chunk_rows] for k, v in rows.items()} for i in range(0, n, self.chunk_rows)]
        else:
            chunks = [batch]
        for chunk in chunks:
            for stage, fault in steps:
                chunk = _apply(stage, chunk, fault)
            yield to_block(chunk)


def _actor_stage(stages: Sequence[Any], chunk_rows: int = 0) -> dict[str, Any]:
    """map_batches' constructor arguments of an actor holding ``stages``."""
    return {"stages": tuple(stages), "faults": tuple(_fault(s) for s in stages), "chunk_rows": chunk_rows}


PIECE_BATCHES = 4  # inference batches per piece of a shard: the unit of work handed to a task or actor


def pieces(shards: Sequence[dict], rows: int) -> list[dict]:
    """Each shard cut into pieces of at most ``rows`` manifest rows, keeping its ``shard_id``: the unit of
    work Ray Data hands out (it gives a whole block to one task or actor and does not split it), so that a
    manifest of one shard still spreads over every actor, while the shard stays the unit of resume."""
    return [{**s, "start": a, "stop": min(a + rows, s["stop"])}
            for s in shards for a in range(s["start"], s["stop"], rows)]


@dataclass(frozen=True)
class Resources:
    device: str
    num_actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int
    cpu_concurrency: int | None
    max_actors: int | None = None  # None: the pool grows with the cluster (autoscaling GPU clusters)
    cpus_per_task: float = 1.0
    fused: bool = False  # decode -> inference -> compose in the actors (colorize on CPU-only clusters)


def plan_resources(cfg: ColorizeConfig, cluster: dict[str, float] | None = None, pools: int = 1,
                   inference_share: float | None = None, fusable: bool = False) -> Resources:
    """Derive pool sizes from the cluster: one replica per GPU; on CPU-only clusters one replica per
    16 CPUs of inference, or, fused, one per CPU.

    ``fusable`` (the colorize job: one model) with ``inference.layout`` auto on a CPU-only cluster, or
    ``fused``, gives the fused layout: each actor decodes, infers and composes its batch in one process at one
    torch thread, one actor per CPU, each expanding the pieces of the manifest it is handed. On GPUs
    (``fused`` asked for) the actors are the GPU replicas, and the job runs their compose and scores on the GPU. Nothing
    but the metrics rows leaves an actor, and no task worker is started at all (a task worker's start-up, its
    imports, costs seconds of CPU, and Ray reaps idle workers beyond one per CPU: docs/cost.md).

    Split, cores are never oversubscribed: a replica runs as many torch threads as the CPUs it reserves
    (rounded), and the CPU stages get the rest. On a CPU-only cluster the split follows
    ``inference_share`` = forward cost / (forward + CPU-stage cost) per image, measured by the job
    (:func:`colorize_core.stages.inference_share`); without it, half. A forward-bound model (eccv16) thus
    gets nearly all cores and the CPU tasks a fraction of one, a light one (compact) a fraction of a CPU
    (down to a quarter: its forward needs ~4% of one).

    ``pools`` inference pools (one per model, evaluation) split that share: on GPUs each pool gets
    ``GPUs / pools`` replicas, or a fraction of one GPU per replica when there are fewer GPUs than
    pools. ``cfg`` is any config with ``inference`` and ``cpu`` sections."""
    cluster = cluster if cluster is not None else ray.cluster_resources()
    cpus = max(1, int(cluster.get("CPU", 1)))
    gpus = int(cluster.get("GPU", 0))
    inf = cfg.inference
    device = inf.device if inf.device != "auto" else ("cuda" if gpus else "cpu")
    if device == "cuda" and not gpus:
        raise RuntimeError("inference.device is 'cuda' but the Ray cluster has no GPU")
    max_actors = getattr(inf, "max_actors", None)
    cpus_per_task = 1.0
    fused = pools == 1 and fusable and (inf.layout == "fused" or (inf.layout == "auto" and device == "cpu"))
    if fused and device == "cpu":
        num_actors = inf.num_actors or max(1, cpus)
        cpus_per_actor = inf.cpus_per_actor or cpus / num_actors
        threads = inf.threads or max(1, round(cpus_per_actor))
        if num_actors * cpus_per_actor > cpus:
            raise RuntimeError(f"{num_actors} fused actor(s) x {cpus_per_actor} CPUs do not fit on a {cpus}-CPU "
                               f"cluster; lower inference.num_actors or cpus_per_actor")
        # No task runs beside the actors: they expand their pieces of the manifest themselves.
        return Resources(device, num_actors, cpus_per_actor, 0.0, threads, cfg.cpu.concurrency,
                         max_actors or num_actors, fused=True)
    if device == "cuda":
        num_actors = inf.num_actors or max(1, gpus // pools)
        cpus_per_actor = inf.cpus_per_actor or 1
        gpus_per_actor = min(1.0, gpus / (num_actors * pools))
    else:
        share = 0.5 if inference_share is None else min(max(inference_share, 0.05), 0.95)
        inference_cpus = cpus * share
        num_actors = inf.num_actors or max(1, cpus // 16)
        # A light replica (compact) holds a fraction of a CPU at one thread: its forward needs ~4% of one.
        cpus_per_actor = inf.cpus_per_actor or max(0.25, inference_cpus / (num_actors * pools))
        gpus_per_actor = 0.0
        max_actors = max_actors or num_actors  # the CPU split is planned: a pool grows only if asked to
        # CPU tasks take whole CPUs where there are enough, else what the replicas leave.
        cpus_per_task = min(1.0, max(0.1, cpus - num_actors * cpus_per_actor * pools))
    if device == "cpu" and (num_actors * cpus_per_actor * pools > cpus - 0.1 or (pools == 1 and cpus < 2)):
        raise RuntimeError(
            f"{pools} pool(s) x {num_actors} inference actor(s) x {cpus_per_actor} CPUs leave no CPU for the "
            f"decode and compose stages on a {cpus}-CPU cluster; lower inference.num_actors or cpus_per_actor")
    threads = inf.threads or max(1, round(cpus_per_actor))
    return Resources(device, num_actors, cpus_per_actor, gpus_per_actor, threads, cfg.cpu.concurrency,
                     max_actors, cpus_per_task, fused=fused)


def build_dataset(shards: Iterable[dict], expand, decode, infer: Any | Sequence[Any], compose, cfg: ColorizeConfig,
                  res: Resources) -> ray.data.Dataset:
    """shards -> rows -> (decode) -> (inference actors) -> (compose, write, score) -> metrics rows.

    ``infer`` is one inference stage or several (evaluation): each gets its own actor pool, chained,
    each adding its own ab column to the batch. With ``res.fused`` the three run in one pool of actors,
    the source's bytes fetched once (``decode.keep_source``)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    for key, value in FAIL_FAST.items():
        if hasattr(ctx, key):  # every key exists in Ray 2.60; an older Ray lacks the newest
            setattr(ctx, key, value)
    # Pieces of shards, a block each: Ray Data hands a whole block to one task or actor.
    work = pieces(list(shards), max(1, PIECE_BATCHES * cfg.inference.batch_size))
    ds = ray.data.from_items(work, override_num_blocks=max(1, len(work)))
    stages = tuple(infer) if isinstance(infer, Sequence) else (infer,)
    if res.fused:
        if len(stages) != 1:
            raise ValueError("a fused layout holds one model")
        fused = (expand, replace(decode, keep_source=True), *stages, compose)
        return ds.map_batches(
            _ActorStage, fn_constructor_kwargs=_actor_stage(fused, chunk_rows=cfg.inference.batch_size),
            batch_size=1, batch_format="numpy",
            # From one actor up: work starts when the first is ready, and a CPU still held (a killed run's
            # actors being reaped, another job) delays one actor rather than the run.
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=res.max_actors or res.num_actors),
            num_cpus=res.cpus_per_actor, num_gpus=res.gpus_per_actor or None, memory=cfg.cpu.memory_per_task)
    cpu_args: dict[str, Any] = {"num_cpus": res.cpus_per_task}
    if res.cpu_concurrency:
        cpu_args["compute"] = ray.data.TaskPoolStrategy(size=res.cpu_concurrency)
    ds = ds.map_batches(_run_cpu_stage, fn_kwargs={"stage": expand, "fault": _fault(expand)},
                        batch_size=1, batch_format="numpy", **cpu_args)
    # Declaring the memory a decode needs also keeps Ray Data from fusing decode into the inference
    # actors (it fuses a task stage into a following actor stage whose remote args match, as on
    # CPU-only clusters): split, decoding must overlap inference, not queue behind it in the same process.
    image_args = {**cpu_args, "memory": cfg.cpu.memory_per_task}
    ds = ds.map_batches(_run_cpu_stage, fn_kwargs={"stage": decode, "fault": _fault(decode)},
                        batch_size=cfg.cpu.batch_size, batch_format="numpy", **image_args)
    for stage in stages:
        ds = ds.map_batches(
            _ActorStage,
            fn_constructor_kwargs=_actor_stage((stage,)),
            batch_size=cfg.inference.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=res.num_actors, max_size=res.max_actors),
            num_cpus=res.cpus_per_actor,
            num_gpus=res.gpus_per_actor or None,
        )
    ds = ds.map_batches(_run_cpu_stage, fn_kwargs={"stage": compose, "fault": _fault(compose)},
                        batch_size=cfg.cpu.batch_size, batch_format="numpy", **image_args)
    return ds


# --------------------------------------------------------------------------------------------- Ray Train


class TrainWorker:
    """What a training loop needs from Ray Train on its worker (rank, world size, device, DDP wrapping,
    reporting), so that :mod:`colorize_core.train` never imports Ray."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    @property
    def device(self):
        import ray.train.torch

        return ray.train.torch.get_device()

    @staticmethod
    def prepare(module):
        import ray.train.torch

        return ray.train.torch.prepare_model(module)

    @staticmethod
    def report(metrics: dict[str, Any]) -> None:
        import ray.train

        ray.train.report(metrics)


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def fit(loop, loop_config: dict[str, Any], *, num_workers: int, use_gpu: bool, cpus_per_worker: float,
        storage_path: str | None, max_failures: int) -> dict[str, Any]:
    """Run ``loop(loop_config)`` on ``num_workers`` Ray Train workers (data-parallel TorchTrainer); returns the
    last reported metrics."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name="train", storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    return dict(trainer.fit().metrics or {})
