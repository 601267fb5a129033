"""Iteration times and power of one machine, interpolated from the Splitwise measurements.

The CSV holds, per model, hardware and tensor-parallel degree, repeated runs of: a prompt-size sweep
at batch 1 (128..8192 tokens) and a batch sweep at 512-token prompts (1..64 sequences), each with
the prefill time of the whole batch and the time of one decode iteration.

- Prefill of an iteration with T prompt tokens: piecewise-linear over T = prompt_size * batch_size
  (median of the runs at each T, as the Splitwise simulator does), made non-decreasing (short
  prompts measure within noise of each other), flat below 128 tokens, linear past the last point.
- Decode iteration of b sequences holding C context tokens in all: piecewise-linear over b from the
  batch sweep (where C = 512 b), plus the per-context-token slope fitted on the batch-1 prompt-size
  sweep for the difference C - 512 b (KV reads grow with the context).
- `DecodeTiming.SPLITWISE_SIM` instead reads decode iterations as the Splitwise simulator does:
  the token time of every run, interpolated over prompt_size * batch_size, looked up at the number
  of sequences in the batch, with no context term. That curve is nearly flat (about one batch-1
  iteration up to hundreds of sequences), so decode batching is almost free; the paper's results
  rest on it. Kept to show how much of the gap to the paper this one choice explains.
- Mixed iteration (prompts and decodes together, as in a colocated machine): the larger of the two
  models at the iteration's size, times `mixed_penalty` (1.1, the Splitwise simulator's factor).
- Power: fractions of TDP measured in the same file (prefill: peak power over T; decode: average
  power). Only A100 rows carry power; other GPUs use the A100 fractions of their own TDP.
"""

from __future__ import annotations

import bisect
import csv
import enum
import pathlib
import statistics
from collections import defaultdict
from dataclasses import dataclass

_COLUMNS = ("model", "hardware", "prompt_size", "batch_size", "token_size", "peak_power",
            "average_power", "prompt_time", "token_time", "tensor_parallel")
_BATCH_SWEEP_PROMPT = 512


class DecodeTiming(str, enum.Enum):
    """How a decode iteration's time is read off the measurements."""

    BATCH_SWEEP = "batch-sweep"      # over batch size (measured sweep) plus a context term
    SPLITWISE_SIM = "splitwise-sim"  # as the Splitwise simulator: batch size on the batch-tokens curve


@dataclass(slots=True, frozen=True)
class Piecewise:
    """A piecewise-linear function over sorted x: flat below the first point, and past the last
    point linear (`is_extrapolated`) or flat."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]
    is_extrapolated: bool = True

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1] and not self.is_extrapolated:
            return ys[-1]
        i = bisect.bisect_right(xs, x)
        i = min(max(i, 1), len(xs) - 1)
        x0, x1 = xs[i - 1], xs[i]
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)


@dataclass(slots=True)
class PerfModel:
    """Measured iteration times (seconds) and power fractions of one model on one machine type."""

    model: str
    hardware: str
    tensor_parallel: int
    prefill: Piecewise           # seconds over prompt tokens in the iteration
    decode_by_batch: Piecewise   # seconds over batch size, at 512 context tokens per sequence
    context_slope_s: float       # extra seconds per context token beyond 512 per sequence
    prefill_power: Piecewise     # fraction of TDP over prompt tokens
    decode_power: float          # fraction of TDP while decoding
    power_source: str            # hardware whose power rows were used
    mixed_penalty: float = 1.1

    def prefill_time(self, num_tokens: float) -> float:
        """Seconds of an iteration that prefills `num_tokens` prompt tokens."""
        return self.prefill(num_tokens)

    def decode_time(self, batch_size: int, context_tokens: float) -> float:
        """Seconds of one decode iteration of `batch_size` sequences over `context_tokens` in all."""
        extra = context_tokens - _BATCH_SWEEP_PROMPT * batch_size
        return self.decode_by_batch(batch_size) + self.context_slope_s * extra

    def mixed_time(self, num_prompt_tokens: float, batch_size: int, context_tokens: float) -> float:
        """Seconds of an iteration that prefills prompts and decodes a batch together."""
        return self.mixed_penalty * max(self.prefill(num_prompt_tokens + batch_size),
                                        self.decode_time(batch_size, context_tokens))

    def prefill_power_fraction(self, num_tokens: float) -> float:
        """Fraction of TDP drawn while prefilling `num_tokens` (clipped to [0, 1])."""
        return min(1.0, max(0.0, self.prefill_power(num_tokens)))


def load_perf_model(csv_path: pathlib.Path, model: str, hardware: str, tensor_parallel: int,
                    power_hardware: str = "a100-80gb",
                    decode_timing: DecodeTiming = DecodeTiming.BATCH_SWEEP) -> PerfModel:
    """Builds the model for one (model, hardware, tensor-parallel) from the Splitwise CSV."""
    rows = _read_rows(pathlib.Path(csv_path))
    mine = [r for r in rows if (r["model"], r["hardware"], r["tensor_parallel"]) ==
            (model, hardware, tensor_parallel)]
    if not mine:
        available = sorted({(r["model"], r["hardware"], r["tensor_parallel"]) for r in rows})
        raise ValueError(f"no rows for model={model} hardware={hardware} tp={tensor_parallel} in "
                         f"{csv_path}; available: {available}")
    by_tokens = _medians(mine, lambda r: r["prompt_size"] * r["batch_size"], "prompt_time")
    sweep = [r for r in mine if r["prompt_size"] == _BATCH_SWEEP_PROMPT]
    by_batch = _medians(sweep, lambda r: r["batch_size"], "token_time")
    single = _medians([r for r in mine if r["batch_size"] == 1], lambda r: r["prompt_size"],
                      "token_time")
    if len(by_tokens) < 2 or len(by_batch) < 2 or len(single) < 2:
        raise ValueError(f"{csv_path}: too few distinct points for {model} on {hardware}")
    slope = max(0.0, _slope(single)) * 1e-3
    if DecodeTiming(decode_timing) is DecodeTiming.SPLITWISE_SIM:
        by_batch = _medians(mine, lambda r: r["prompt_size"] * r["batch_size"], "token_time")
        slope = 0.0
    prefill_power, decode_power, source = _power(rows, model, hardware, tensor_parallel,
                                                 power_hardware, csv_path)
    return PerfModel(model, hardware, tensor_parallel,
                     prefill=_piecewise(_non_decreasing(by_tokens), scale=1e-3),
                     decode_by_batch=_piecewise(by_batch, scale=1e-3),
                     context_slope_s=slope,
                     prefill_power=prefill_power, decode_power=decode_power, power_source=source)


def _power(rows, model, hardware, tensor_parallel, power_hardware, csv_path):
    def measured(hw):
        return [r for r in rows if (r["model"], r["hardware"], r["tensor_parallel"]) ==
                (model, hw, tensor_parallel) and r["peak_power"] > 0 and r["average_power"] > 0]
    source = hardware if measured(hardware) else power_hardware
    chosen = measured(source)
    if not chosen:
        raise ValueError(f"{csv_path}: no power measurements for {model} tp={tensor_parallel} on "
                         f"{hardware} or {power_hardware}")
    peak = _medians(chosen, lambda r: r["prompt_size"] * r["batch_size"], "peak_power")
    average = statistics.median(r["average_power"] for r in chosen)
    power = _piecewise(peak, scale=1.0)
    return Piecewise(power.xs, power.ys, is_extrapolated=False), average, source


def _read_rows(path: pathlib.Path) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"performance model CSV not found: {path}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            try:
                rows.append({"model": raw["model"], "hardware": raw["hardware"],
                             "prompt_size": int(raw["prompt_size"]),
                             "batch_size": int(raw["batch_size"]),
                             "tensor_parallel": int(raw["tensor_parallel"]),
                             **{k: float(raw[k]) for k in ("peak_power", "average_power",
                                                           "prompt_time", "token_time")}})
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: malformed row ({exc})") from None
    return rows


def _medians(rows, key, column) -> list[tuple[float, float]]:
    groups: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r[column])
    return sorted((x, statistics.median(ys)) for x, ys in groups.items())


def _piecewise(points: list[tuple[float, float]], scale: float) -> Piecewise:
    return Piecewise(tuple(float(x) for x, _ in points), tuple(y * scale for _, y in points))


def _non_decreasing(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    # Each time becomes the least measured at this size or above: noise cannot make a larger
    # iteration faster than a smaller one.
    out, floor = [], float("inf")
    for x, y in reversed(points):
        floor = min(floor, y)
        out.append((x, floor))
    return out[::-1]


def _slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var
