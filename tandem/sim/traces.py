"""Request traces: the Azure LLM CSV and Mooncake JSONL formats, and ways to reshape a trace.

A `Trace` is columnar (numpy): arrival seconds from the first request, prompt and output token
counts, and for Mooncake the ids of each prompt's 512-token blocks (equal ids = shared prefix).
"""

from __future__ import annotations

import enum
import json
import pathlib
from dataclasses import dataclass

import numpy as np

_AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_BLOCK_TOKENS = 512


class TraceFormat(str, enum.Enum):
    """File formats the loader reads."""

    AZURE = "azure"
    MOONCAKE = "mooncake"


@dataclass(slots=True)
class Trace:
    """Requests in arrival order."""

    arrival_s: np.ndarray          # float64, seconds, non-decreasing, first at 0 unless windowed
    prompt_tokens: np.ndarray      # int64, >= 1
    output_tokens: np.ndarray      # int64, >= 1
    block_hashes: list[list[int]] | None = None  # per request, prompt block ids (Mooncake)
    block_size: int = MOONCAKE_BLOCK_TOKENS
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.prompt_tokens) != n or len(self.output_tokens) != n:
            raise ValueError("Trace: columns differ in length")
        if self.block_hashes is not None and len(self.block_hashes) != n:
            raise ValueError("Trace: block_hashes differs in length from the other columns")
        if n and np.any(np.diff(self.arrival_s) < 0):
            raise ValueError("Trace: arrival times must be non-decreasing")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        """Seconds from the first arrival to the last."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0


def detect_format(path: pathlib.Path) -> TraceFormat:
    """Guesses the format from the file's extension and first line."""
    path = pathlib.Path(path)
    with path.open() as handle:
        first = handle.readline().strip()
    if first.startswith("{"):
        return TraceFormat.MOONCAKE
    if first.split(",")[:1] == ["TIMESTAMP"]:
        return TraceFormat.AZURE
    raise ValueError(f"{path}: cannot tell the trace format from its first line {first[:60]!r}; "
                     f"pass --format azure|mooncake")


def load_trace(path: pathlib.Path | str, fmt: TraceFormat | str | None = None) -> Trace:
    """Reads a trace file; raises ValueError naming the file and line of any malformed row."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"trace file not found: {path}")
    fmt = detect_format(path) if fmt is None else TraceFormat(fmt)
    trace = _load_azure(path) if fmt is TraceFormat.AZURE else _load_mooncake(path)
    if len(trace) == 0:
        raise ValueError(f"{path}: the trace has no requests")
    return trace


def _load_azure(path: pathlib.Path) -> Trace:
    lines = path.read_text().splitlines()
    header = tuple(c.strip() for c in lines[0].split(",")) if lines else ()
    if header != _AZURE_HEADER:
        raise ValueError(f"{path}:1: expected the header {','.join(_AZURE_HEADER)}, got {lines[:1]}")
    rows = [(number, line.split(",")) for number, line in enumerate(lines[1:], start=2)
            if line.strip()]
    for number, parts in rows:
        if len(parts) != 3:
            raise ValueError(f"{path}:{number}: expected 3 fields, got {len(parts)}")
    try:
        times = np.array([p[0].strip().replace(" ", "T") for _, p in rows], dtype="datetime64[ns]")
        prompts = np.array([p[1] for _, p in rows], dtype=np.int64)
        outputs = np.array([p[2] for _, p in rows], dtype=np.int64)
    except ValueError:
        _raise_first_bad_azure_row(path, rows)
        raise
    for i in np.flatnonzero((prompts < 1) | (outputs < 0))[:1]:
        _check_sizes(path, rows[i][0], int(prompts[i]), int(outputs[i]))
    seconds = (times - times.min()).astype(np.float64) / 1e9 if len(times) else times
    return _finish(path, seconds, prompts, outputs, None)


def _raise_first_bad_azure_row(path: pathlib.Path, rows) -> None:
    # The vectorised parse failed: find the first bad row to name it.
    for number, parts in rows:
        try:
            np.datetime64(parts[0].strip().replace(" ", "T"), "ns")
            int(parts[1]), int(parts[2])
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: malformed row {','.join(parts)[:80]!r} "
                             f"({exc})") from None


def _load_mooncake(path: pathlib.Path) -> Trace:
    stamps, prompts, outputs, hashes = [], [], [], []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                stamps.append(float(row["timestamp"]) / 1000.0)
                prompts.append(int(row["input_length"]))
                outputs.append(int(row["output_length"]))
                hashes.append([int(h) for h in row.get("hash_ids", [])])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: malformed Mooncake row ({type(exc).__name__}: "
                                 f"{exc}); expected timestamp, input_length, output_length, "
                                 f"hash_ids") from None
            _check_sizes(path, number, prompts[-1], outputs[-1])
    times = np.array(stamps, dtype=np.float64)
    return _finish(path, times - times.min() if len(times) else times, prompts, outputs, hashes)


def _check_sizes(path: pathlib.Path, number: int, prompt: int, output: int) -> None:
    if prompt < 1 or output < 0:
        raise ValueError(f"{path}:{number}: prompt tokens must be >= 1 and output tokens >= 0, "
                         f"got {prompt} and {output}")


def _finish(path, times, prompts, outputs, hashes) -> Trace:
    # Sort by arrival (stable), so that files written out of order still replay correctly. A
    # request asking for 0 tokens still yields its first token: count it as 1.
    order = np.argsort(times, kind="stable")
    out = np.maximum(np.asarray(outputs, dtype=np.int64), 1)
    return Trace(np.asarray(times, dtype=np.float64)[order],
                 np.asarray(prompts, dtype=np.int64)[order], out[order],
                 [hashes[i] for i in order] if hashes is not None else None, source=str(path))


def scale_rate(trace: Trace, factor: float) -> Trace:
    """Replays `trace` at `factor` times its rate (arrival times divided by factor)."""
    if not factor > 0:
        raise ValueError(f"rate scale must be > 0, got {factor}")
    return Trace(trace.arrival_s / factor, trace.prompt_tokens, trace.output_tokens,
                 trace.block_hashes, trace.block_size, trace.source)


def window(trace: Trace, start_s: float, duration_s: float | None) -> Trace:
    """The requests arriving in [start_s, start_s + duration_s), re-based to start at 0."""
    if start_s < 0 or (duration_s is not None and duration_s <= 0):
        raise ValueError(f"bad window: start {start_s}s, duration {duration_s}s")
    end = np.inf if duration_s is None else start_s + duration_s
    mask = (trace.arrival_s >= start_s) & (trace.arrival_s < end)
    if not mask.any():
        raise ValueError(f"no requests in the window [{start_s}, {end}) s of {trace.source}")
    idx = np.flatnonzero(mask)
    hashes = [trace.block_hashes[i] for i in idx] if trace.block_hashes is not None else None
    return Trace(trace.arrival_s[idx] - start_s, trace.prompt_tokens[idx], trace.output_tokens[idx],
                 hashes, trace.block_size, trace.source)


def poisson(trace: Trace, rate_per_s: float, num_requests: int, seed: int) -> Trace:
    """Poisson arrivals at a fixed rate with (prompt, output) pairs drawn from `trace`."""
    if not rate_per_s > 0 or num_requests < 1:
        raise ValueError(f"Poisson needs rate > 0 and num_requests >= 1, got {rate_per_s}, "
                         f"{num_requests}")
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_per_s, size=num_requests))
    arrivals -= arrivals[0]
    pick = rng.integers(0, len(trace), size=num_requests)
    hashes = [trace.block_hashes[i] for i in pick] if trace.block_hashes is not None else None
    return Trace(arrivals, trace.prompt_tokens[pick], trace.output_tokens[pick], hashes,
                 trace.block_size, f"poisson({rate_per_s}/s) from {trace.source}")


def spread_ties(trace: Trace) -> Trace:
    """Spreads requests that share a timestamp evenly until the next distinct timestamp.

    The Mooncake trace stamps requests in groups (about 10 at a time, some 3 s apart); replayed as
    is, each group lands at once. Spreading keeps every group in its own interval and the order of
    the requests; the last group spreads over the median interval between distinct timestamps.
    """
    times = trace.arrival_s
    if len(times) < 2:
        return trace
    distinct, first, counts = np.unique(times, return_index=True, return_counts=True)
    gaps = np.diff(distinct)
    if gaps.size == 0:
        return trace
    widths = np.append(gaps, np.median(gaps))
    rank = np.arange(len(times)) - np.repeat(first, counts)   # position within its group
    spread = times + np.repeat(widths / counts, counts) * rank
    return Trace(spread, trace.prompt_tokens, trace.output_tokens, trace.block_hashes,
                 trace.block_size, trace.source)


def amplify(trace: Trace, factor: int, seed: int, jitter_s: float = 10.0) -> Trace:
    """`factor` copies of `trace` on its own timeline, each arrival jittered by up to +-jitter_s/2.

    Unlike `scale_rate`, this keeps the trace's load variation over time (minutes, hours) while
    multiplying the load: what an autoscaling comparison needs.
    """
    if factor < 1 or jitter_s < 0:
        raise ValueError(f"amplify needs factor >= 1 and jitter >= 0, got {factor}, {jitter_s}")
    rng = np.random.default_rng(seed)
    n = len(trace)
    arrivals = np.concatenate([trace.arrival_s] + [
        np.clip(trace.arrival_s + rng.uniform(-jitter_s / 2, jitter_s / 2, n), 0.0, None)
        for _ in range(factor - 1)])
    order = np.argsort(arrivals, kind="stable")
    source = np.tile(np.arange(n), factor)[order]
    hashes = [trace.block_hashes[i] for i in source] if trace.block_hashes is not None else None
    return Trace(arrivals[order], trace.prompt_tokens[source], trace.output_tokens[source], hashes,
                 trace.block_size, f"{factor}x amplified {trace.source}")
