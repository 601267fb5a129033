"""Runs a router with profilers that signals switch on and off, so only chosen load windows count.

    python benchmarks/router_profile.py --out-dir DIR --plan sample,cprofile -- router --model ...

`request_window(DIR, pid, k, True)` starts window k (the k-th profiler of --plan, from 0) and
`request_window(DIR, pid, k, False)` stops it and writes DIR/window-<k>.json (sample) or
DIR/window-<k>.pstats (cprofile): a control file says what is wanted and SIGUSR1 says "look".
Start-up and warm-up stay out of every profile; without requests the process is a plain router. The router's
Python code all runs on its event-loop thread (the main thread), the thread both profilers watch:

- sample: a thread reads the main thread's stack (sys._current_frames) every --interval-ms and
  counts each distinct stack. Little overhead, but C and Cython code (gRPC's aio layer, asyncio's
  C task steps) shows as the Python frame that called it, and samples are taken where the main
  thread lets go of the GIL, which gRPC's Cython code does often: shares lean towards that code.
- cprofile: cProfile on the main thread: exact call counts, but its per-call overhead inflates
  Python-heavy code (several times the unprofiled CPU per token).
"""

from __future__ import annotations

import argparse
import cProfile
import collections
import functools
import json
import os
import signal
import sys
import sysconfig
import threading
import time
from pathlib import Path

PLAN_KINDS = ("sample", "cprofile")
CONTROL_FILE = "control"
REPO_ROOT = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def short_path(filename: str) -> str:
    """A source path from its package down: "grpc/aio/_call.py", "router/core.py", "stdlib/selectors.py"."""
    path = Path(filename)
    if "site-packages" in path.parts:
        return "/".join(path.parts[len(path.parts) - path.parts[::-1].index("site-packages"):])
    if path.is_relative_to(REPO_ROOT):
        return path.relative_to(REPO_ROOT).as_posix()
    if path.is_relative_to(STDLIB):
        return "stdlib/" + path.relative_to(STDLIB).as_posix()
    return "/".join(path.parts[-2:])


@functools.lru_cache(maxsize=None)
def frame_key(code) -> str:
    """A function as "path/file.py:line(name)" (cached: the sampler asks for every frame it sees)."""
    return f"{short_path(code.co_filename)}:{code.co_firstlineno}({code.co_name})"


class StackSampler:
    """Samples one thread's Python stack from a background thread."""

    def __init__(self, thread_id: int, interval_s: float) -> None:
        self.thread_id = thread_id
        self.interval_s = interval_s
        # Stack (innermost function first) -> number of samples.
        self.stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
        self.started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)
        self._old_switch_interval = sys.getswitchinterval()

    def start(self) -> None:
        """Starts sampling."""
        # The sampler needs the GIL to read a stack: a busy main thread must hand it over promptly.
        sys.setswitchinterval(self.interval_s / 2)
        self.started = time.perf_counter()
        self._thread.start()

    def stop(self) -> dict:
        """Stops sampling and returns the stacks with their counts."""
        self._stop.set()
        self._thread.join()
        sys.setswitchinterval(self._old_switch_interval)
        return {"wall_s": time.perf_counter() - self.started,
                "stacks": [[list(stack), count] for stack, count in self.stacks.items()]}

    def _run(self) -> None:
        while not self._stop.is_set():
            frame = sys._current_frames().get(self.thread_id)
            stack = []
            while frame is not None:
                stack.append(frame_key(frame.f_code))
                frame = frame.f_back
            if stack:
                self.stacks[tuple(stack)] += 1
            time.sleep(self.interval_s)


class WindowProfiler:
    """On SIGUSR1, brings the profilers to the state the control file asks for.

    The control file holds "<k> on" or "<k> off" (k: a window of the plan). The handler reconciles
    rather than toggles, because signals sent close together may arrive as one.
    """

    def __init__(self, plan: list[str], out_dir: Path, interval_s: float) -> None:
        self.plan, self.out_dir, self.interval_s = plan, out_dir, interval_s
        self.running_index: int | None = None
        self.running = None

    def reconcile(self, *_) -> None:
        """SIGUSR1: stops and writes the running window unless wanted; starts the wanted one."""
        index, state = read_control(self.out_dir)
        if self.running_index is not None and (state == "off" or index != self.running_index):
            self._stop_and_write()
        if state == "on" and self.running_index is None and 0 <= index < len(self.plan):
            self._start(index)

    def _start(self, index: int) -> None:
        if self.plan[index] == "sample":
            self.running = StackSampler(threading.main_thread().ident, self.interval_s)
            self.running.start()
        else:
            self.running = cProfile.Profile()
            self.running.enable()
        self.running_index = index

    def _stop_and_write(self) -> None:
        running, index = self.running, self.running_index
        self.running = self.running_index = None
        if isinstance(running, StackSampler):
            counts = running.stop()
            write_atomically(self.out_dir / f"window-{index}.json",
                             lambda tmp: tmp.write_text(json.dumps(counts)))
        else:
            running.disable()
            write_atomically(self.out_dir / f"window-{index}.pstats",
                             lambda tmp: running.dump_stats(str(tmp)))


def read_control(out_dir: Path) -> tuple[int, str]:
    """The window and state the control file asks for ((-1, "off") before any)."""
    try:
        index, state = (out_dir / CONTROL_FILE).read_text().split()
    except FileNotFoundError:
        return -1, "off"
    return int(index), state


def request_window(out_dir: Path, pid: int, index: int, is_on: bool) -> None:
    """Asks the profiled process (pid) to start (is_on) or stop window `index` of its plan."""
    wanted = f"{index} {'on' if is_on else 'off'}"
    write_atomically(out_dir / CONTROL_FILE, lambda tmp: tmp.write_text(wanted))
    os.kill(pid, signal.SIGUSR1)


def write_atomically(path: Path, write) -> None:
    """Writes a file aside and renames it, so that a reader never sees half of it."""
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def main() -> int:
    """Runs `tandem <args>` with the window profilers installed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True, help="where each window's profile is written")
    parser.add_argument("--plan", default="sample,cprofile",
                        help=f"comma-separated profilers, one per window, of {PLAN_KINDS}")
    parser.add_argument("--interval-ms", type=float, default=1.0, help="stack sampling interval")
    parser.add_argument("tandem_args", nargs=argparse.REMAINDER, help="-- then the tandem command")
    args = parser.parse_args()
    plan = [kind for kind in args.plan.split(",") if kind]
    unknown = [kind for kind in plan if kind not in PLAN_KINDS]
    if unknown or args.interval_ms <= 0:
        raise SystemExit(f"--plan takes {PLAN_KINDS} (got {unknown}) and --interval-ms must be > 0")
    profiler = WindowProfiler(plan, Path(args.out_dir), args.interval_ms / 1000.0)
    signal.signal(signal.SIGUSR1, profiler.reconcile)
    # This folder holds router.py, which would shadow the `router` package the command imports.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    from tandem.cli import main as tandem_main

    tandem_args = args.tandem_args[1:] if args.tandem_args[:1] == ["--"] else args.tandem_args
    return tandem_main(tandem_args)


if __name__ == "__main__":
    sys.exit(main())
