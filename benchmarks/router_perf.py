"""Native CPU profile of a process with Linux `perf` (optional part of the router benchmark).

Python profilers cannot see inside gRPC's Cython and C++ core, protobuf's upb or the kernel; perf
samples the whole process natively, so its split by shared object says how much of the router's CPU
is the Python interpreter (all Python code: the router's, asyncio's, gRPC's Python layer), gRPC's
native code, protobuf, the tokenizer and the kernel (sockets, epoll).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

SAMPLE_HZ = 499


def start_perf(pid: int, out_path: Path) -> subprocess.Popen:
    """Starts sampling pid's CPU (all its threads) into out_path; raises if perf is missing."""
    perf = shutil.which("perf")
    if perf is None:
        raise RuntimeError("--perf needs the Linux `perf` tool on PATH (package linux-perf or "
                           "linux-tools); run without --perf to skip the native profile")
    return subprocess.Popen([perf, "record", "-F", str(SAMPLE_HZ), "-p", str(pid), "-o", str(out_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_perf(process: subprocess.Popen) -> None:
    """Stops perf record and waits until it has written its file."""
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    if process.returncode not in (0, -signal.SIGINT):
        raise RuntimeError(f"perf record failed (exit {process.returncode}): {stderr[-500:]}")


def summarize_perf(path: Path, us_per_token: float, top_n: int = 20) -> dict:
    """Shares of the process's CPU samples by shared object and by symbol, in us per token too."""
    return {"by_shared_object": _report(path, "dso", us_per_token, top_n),
            "top_symbols": _report(path, "dso,sym", us_per_token, top_n)}


def _report(path: Path, sort: str, us_per_token: float, top_n: int) -> list[dict]:
    result = subprocess.run(["perf", "report", "-i", str(path), "--stdio", "--sort", sort],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"perf report failed: {result.stderr[-500:]}")
    rows = []
    for line in result.stdout.splitlines():
        fields = line.split(None, 1)
        if len(fields) == 2 and fields[0].endswith("%") and not line.startswith("#"):
            share = float(fields[0].rstrip("%")) / 100.0
            rows.append({"where": " ".join(fields[1].split()), "share": round(share, 4),
                         "us_per_token": round(share * us_per_token, 2)})
    return rows[:top_n]
