"""Where the colorize job's core-seconds go, measured as it runs: every process, stages and what lies between.

Two views of one measured run (after an untimed warm-up run in the same Ray session):

* **CPU time per process** from ``/proc/<pid>/stat`` (user + system, all threads, torch's intra-op threads
  included), sampled every 0.25 s over the driver and every process below it (GCS, raylet, Ray's agents, the
  task workers, the inference actor). These are core-seconds, not wall time, so a loaded machine inflates
  them only through cache and frequency effects; they are printed as shares and as core-ms per megapixel.
* **Where inside the Python processes**: ``py-spy record --subprocesses --nonblocking`` on the driver, which
  follows every Ray worker it starts; each sample (one active Python thread at one tick) is put in one
  category by the rules in :data:`RULES` (stage functions of this project first, then Ray Data's block
  building, serialisation and object store, the driver's streaming executor and drain). Printed as shares
  of each process role's samples. py-spy sees Python stacks only: the native threads of torch and of
  Ray's C++ core show up in the first view, not in this one.

    pip install py-spy
    python bench/profile_job.py                       # compact, 40 rows
    python bench/profile_job.py --model eccv16 --rows 16
    python bench/profile_job.py --raw /tmp/spy.txt    # keep py-spy's collapsed stacks

Prints tables; not a test. The machine may be loaded: read shares, not absolute times.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.memory import descendants  # noqa: E402
from bench.throughput import cpu_description, job_run, make_images, write_manifest  # noqa: E402
from colorize_core.models import create_model  # noqa: E402

# (category, pattern on the sampled process's stack, root first, frames joined by ';').
# First match wins, so the more specific patterns come first.
IDLE = "idle"
RULES: list[tuple[str, str]] = [
    # A worker's main thread waiting in Ray's C++ task loop: py-spy --nonblocking counts it as active, but a
    # --native run shows these samples in epoll_wait (Ray's event loop, idle), so they weigh nothing.
    (IDLE, r"Worker\.main_loop \([^;]*$|;(epoll_wait|pthread_cond_wait|pthread_cond_timedwait|__futex_abstimed_wait"
           r"[^;]*|syscall|sem_wait|poll|select) \([^;]*$"),
    ("profiler: this script's /proc sampler", r"CpuSampler"),
    # a process starting (worker or actor: imports, model load): once per process, amortised by long runs
    ("start-up: imports", r"_find_and_load|<frozen importlib"),
    ("start-up: actor class and constructor arguments",
     r"load_actor_class|_ActorStage\.__init__|Worker\.main_loop \([^;]*;Worker\.deserialize_objects"),
    ("inference: setup (model load)", r"InferenceStage\.setup"),
    # compose stage (CPU task)
    ("compose: encode JPEG", r"ComposeStage\._one.*encode_image"),
    ("compose: write output", r"ComposeStage\._one.*write_bytes"),
    ("compose: score (metrics)", r"ComposeStage\._one.*compute_metrics"),
    ("compose: Lab -> sRGB + ab upsampling", r"ComposeStage\._one.*;compose \([^;]*render\.py"),
    ("compose: fetch source again", r"ComposeStage\._one.*read_bytes"),
    ("compose: full-resolution decode (the source; the written file where a reference needs it)",
     r"ComposeStage\._one.*decode_image"),
    ("compose: other", r"ComposeStage\.__call__"),
    # decode stage (CPU task)
    ("decode: fetch source", r"DecodeStage\.__call__.*read_bytes"),
    ("decode: reduced decode", r"DecodeStage\.__call__.*decode_reduced"),
    ("decode: model-size L", r"DecodeStage\.__call__.*model_l"),
    ("decode: other", r"DecodeStage\.__call__"),
    ("expand shards (manifest read)", r"ExpandShards\.__call__"),
    # inference actor
    ("inference: forward", r"InferenceStage\._forward"),
    ("inference: other", r"InferenceStage\.__call__"),
    # between the stages
    ("stage output -> Arrow block (to_block)", r"to_block"),
    ("serialisation (pickle / Arrow IPC)", r"serializ|pickle|_serialize|deserializ"),
    ("object store get/put", r"ray/_private/worker\.py.*\b(get|put)\b|get_objects|put_object"),
    ("Ray Data batching / block conversion", r"ray/data/_internal/(block_batching|arrow_block|table_block|"
                                             r"numpy_support|batcher|output_buffer|planner)|BlockAccessor"),
    # driver
    ("driver: write metrics + markers", r"finish_shard"),
    ("driver: drain (iter_batches)", r"\bdrain\b"),
    ("driver: streaming executor (scheduling)", r"streaming_executor|resource_manager|autoscal|op_runtime"),
    ("Ray Data other", r"ray/data/"),
    ("Ray core (Python side)", r"ray/_private/|ray/_raylet|ray/util/"),
]
_COMPILED = [(label, re.compile(pattern)) for label, pattern in RULES]
_PROCESS = re.compile(r'^process (\d+):"([^"]*)"$')


def classify(frames: list[str]) -> str:
    if not frames:
        return "native thread (no Python frame)"
    stack = ";".join(frames)
    for label, pattern in _COMPILED:
        if pattern.search(stack):
            return label
    return "other Python"


def read_raw(path: Path) -> list[tuple[int, list[str], int]]:
    """py-spy's raw (collapsed) output -> (pid of the sampled process, its frames root first, count); thread
    frames (``--threads``) are dropped."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, pid = [], None
        for frame in stack.split(";"):
            m = _PROCESS.match(frame)
            if m:
                pid, frames = int(m.group(1)), []  # the last process frame is the sampled process
            elif not frame.startswith("thread (0x") and not re.match(r"thread \(\d+\)", frame):
                frames.append(frame)
        if pid is not None:
            out.append((pid, frames, int(count)))
    return out


# --------------------------------------------------------------------------- /proc CPU time


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class CpuSampler(threading.Thread):
    """Last-seen CPU seconds and command line of the driver and every process below it (but ``exclude``),
    so processes that exit during the run still count."""

    def __init__(self, root: int, exclude: set[int]):
        super().__init__(daemon=True)
        self.root, self.exclude = root, exclude
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.cmd: dict[int, str] = {}
        self.stop = threading.Event()
        self._scan(initial=True)

    def _scan(self, initial: bool = False) -> None:
        for pid in (self.root, *descendants(self.root)):
            if pid in self.exclude:
                continue
            secs = _cpu_seconds(pid)
            if secs is None:
                continue
            if pid not in self.first:
                self.first[pid] = secs if initial else 0.0  # a process started during the run: all of it
            self.last[pid] = secs
            self.cmd[pid] = _cmdline(pid) or self.cmd.get(pid, "")  # Ray retitles workers to their task

    def run(self) -> None:
        while not self.stop.wait(0.25):
            self._scan()

    def finish(self) -> dict[int, float]:
        self.stop.set()
        self.join()
        self._scan()
        return {pid: self.last[pid] - self.first[pid] for pid in self.last}


def process_role(pid: int, cmd: str, driver: int, roles_from_stacks: dict[int, str]) -> str:
    if pid == driver:
        return "driver"
    if pid in roles_from_stacks:
        return roles_from_stacks[pid]
    if "raylet" in cmd:
        return "raylet (object store, scheduling)"
    if "gcs_server" in cmd:
        return "GCS"
    if "ray::" in cmd:
        return "Ray workers (other / idle)"
    return "Ray agents and monitors"


def roles_from(samples) -> dict[int, str]:
    """A worker's role by what its samples ran: the actor holds the model, tasks run the CPU stages."""
    seen: dict[int, Counter] = defaultdict(Counter)
    for pid, frames, count in samples:
        stack = ";".join(frames)
        if "_ActorStage" in stack or "InferenceStage" in stack:
            seen[pid]["actor (inference; fused: decode + inference + compose)"] += count
        elif "_run_cpu_stage" in stack:
            seen[pid]["CPU task workers"] += count
    return {pid: c.most_common(1)[0][0] for pid, c in seen.items()}


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="compact")
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--rate", type=int, default=50, help="py-spy samples per second per thread")
    ap.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    ap.add_argument("--cpu-batch-size", dest="cpu_batch_size", type=int, default=4)
    ap.add_argument("--shard-rows", dest="shard_rows", type=int, default=20)
    ap.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    ap.add_argument("--native", action="store_true",
                    help="py-spy --native: C/C++ frames too (pauses each process per sample: more overhead)")
    ap.add_argument("--per-pid", dest="verbose_pids", action="store_true", help="also list every process")
    args = ap.parse_args()
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        sys.exit("error: py-spy not found; pip install py-spy")
    import ray

    print(cpu_description(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp / "in", args.images)
        weights = None
        if args.model != "compact":
            weights = str(tmp / f"{args.model}-random.pth")
            torch.manual_seed(0)
            torch.save(create_model(args.model).state_dict(), weights)
        warm = write_manifest(tmp / "warm.parquet", paths, min(args.rows, 2 * args.images))
        measured = write_manifest(tmp / "measured.parquet", paths, args.rows)
        megapixels = sum(np.prod(Image.open(paths[i % len(paths)]).size) for i in range(args.rows)) / 1e6
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False)
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        raw = args.raw or tmp / "spy.txt"
        try:
            job_run(warm, tmp / "job-warm", args.model, weights, args)  # worker processes and imports, once
            mode = ["--native"] if args.native else ["--nonblocking"]
            spy = subprocess.Popen([pyspy, "record", "--pid", str(os.getpid()), "--subprocesses", *mode,
                                    "--rate", str(args.rate), "--format", "raw", "-o", str(raw)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            time.sleep(2.0)  # attached to every existing process
            sampler = CpuSampler(os.getpid(), exclude={spy.pid})
            sampler.start()
            t0 = time.perf_counter()
            _, summary = job_run(measured, tmp / "job-measured", args.model, weights, args)
            wall = time.perf_counter() - t0
            cpu = sampler.finish()
            spy.send_signal(signal.SIGINT)
            spy_log = spy.communicate(timeout=120)[0].decode(errors="replace")
        finally:
            ray.shutdown()
        samples = read_raw(raw)
    if not samples:
        sys.exit(f"error: py-spy recorded nothing:\n{spy_log}")
    print(f"{args.model}: {args.rows} rows ({args.images} distinct gray JPEGs), {megapixels:.1f} MP, "
          f"{summary['counts']['ok']} ok / {summary['counts']['error']} errors, wall {wall:.1f} s "
          f"(loaded machine: shares, not speeds)\n")

    report(samples, cpu, sampler.cmd, os.getpid(), megapixels, args.verbose_pids)
    print(f"\npy-spy: {spy_log.strip().splitlines()[-2] if spy_log.strip() else ''}")


def report(samples, cpu: dict[int, float], cmds: dict[int, str], driver: int, megapixels: float,
           per_pid: bool = False) -> None:
    """Each process's CPU seconds split over categories in proportion to its py-spy samples (a process with
    no Python samples, raylet or GCS, is one category of its own); idle processes weigh nothing."""
    roles = roles_from(samples)
    counts: dict[int, Counter] = defaultdict(Counter)
    for pid, frames, count in samples:
        label = classify(frames)
        if label != IDLE:
            counts[pid][label] += count
    cells: dict[tuple[str, str], float] = defaultdict(float)
    for pid, secs in cpu.items():
        role = process_role(pid, cmds.get(pid, ""), driver, roles)
        c = counts.get(pid)
        if not c:
            cells[(role, "native code (no active Python samples)")] += secs
            continue
        n = sum(c.values())
        for label, k in c.items():
            cells[(role, label)] += secs * k / n
        if per_pid:
            print(f"  pid {pid} {role}: {secs:.2f} CPU s, {n} samples; {cmds.get(pid, '')[:70]}")
    total = sum(cells.values())
    startup = sum(v for (r, label), v in cells.items() if label.startswith("start-up") or "setup" in label)
    by_role: dict[str, float] = defaultdict(float)
    for (role, _), v in cells.items():
        by_role[role] += v
    print("| process role | share of all CPU time | core-ms per MP |")
    print("|---|---|---|")
    for role, v in sorted(by_role.items(), key=lambda kv: -kv[1]):
        print(f"| {role} | {100 * v / total:.1f}% | {1000 * v / megapixels:.1f} |")
    print(f"| all | 100% | {1000 * total / megapixels:.1f} |")
    print(f"| of which process start-up (imports, model load; once per worker or per dataset's actor) | "
          f"{100 * startup / total:.1f}% | {1000 * startup / megapixels:.1f} |\n")
    print("| process role | category | share of all CPU time | share without start-up | core-ms per MP |")
    print("|---|---|---|---|---|")
    for (role, label), v in sorted(cells.items(), key=lambda kv: (-by_role[kv[0][0]], -kv[1])):
        if v / total < 0.002:
            continue
        steady = "" if label.startswith("start-up") or "setup" in label else f"{100 * v / (total - startup):.1f}%"
        print(f"| {role} | {label} | {100 * v / total:.1f}% | {steady} | {1000 * v / megapixels:.1f} |")


if __name__ == "__main__":
    main()
