"""Reads the router's window profiles back and ranks hot spots per relayed token (or per request).

Stack samples are turned into CPU time with the router's measured CPU seconds over the same window:
a function's microseconds per token = its share of the busy (non-idle) samples times the router's
CPU microseconds per token. cProfile figures are its own timings, overhead included.
"""

from __future__ import annotations

import json
import pstats
from collections import Counter
from pathlib import Path

from router_profile import short_path

# Where a function's code lies decides the component it is charged to (first match wins).
CALLBACK_IN_C = "C/Cython run by the event loop (gRPC aio core, asyncio task steps)"
DETOKENIZE = "router: detokenize (SampleText, TextStream, IncrementalDetokenizer)"
TELEMETRY = "telemetry (prometheus_client, opentelemetry)"
COMPONENTS = (
    ("stdlib/asyncio/events.py:", CALLBACK_IN_C, "(_run)"),
    ("<method 'run' of '_contextvars.Context' objects>", CALLBACK_IN_C, ""),
    ("router/sample_text.py", DETOKENIZE, ""),
    ("tandem/engine/request_output.py", DETOKENIZE, ""),
    ("tandem/engine/tokenizer.py", DETOKENIZE, ""),
    ("tokenizers", DETOKENIZE, ""),
    ("router/", "router: request path (grpc_api, admission, core, dispatch, worker_pool)", ""),
    ("tandem/telemetry", TELEMETRY, ""),
    ("prometheus_client", TELEMETRY, ""),
    ("opentelemetry", TELEMETRY, ""),
    ("grpc/", "gRPC Python layer", ""),
    ("_upb", "protobuf (upb)", ""),
    ("google/protobuf", "protobuf (upb)", ""),
    ("stdlib/asyncio", "asyncio Python layer", ""),
    ("stdlib/selectors.py", "asyncio Python layer", ""),
)
OTHER = "other (builtins, stdlib)"
PROJECT_PREFIXES = ("router/", "tandem/")
# On every stack (they start the event loop): no information.
ENTRY_POINTS = ("tandem/cli.py", "router/main.py")


def component(location: str) -> str:
    """The component a function (as router_profile.frame_key writes it) is charged to."""
    for fragment, name, suffix in COMPONENTS:
        if fragment in location and location.endswith(suffix):
            return name
    return OTHER


def is_idle(location: str) -> bool:
    """True for the event loop waiting on epoll (the main thread has nothing to do)."""
    return location.startswith("stdlib/selectors.py:") and location.endswith("(select)") or \
        location == "<method 'poll' of 'select.epoll' objects>"


def summarize_samples(path: Path, num_units: int, router_cpu_s: float, unit: str = "token",
                      top_n: int = 15) -> dict:
    """Self and inclusive time per unit (token or request) of the sampled functions."""
    if num_units <= 0:
        raise ValueError(f"the sampled window relayed no {unit}s; nothing to divide by")
    stacks = json.loads(Path(path).read_text())["stacks"]
    num_samples = sum(count for _, count in stacks)
    busy = [(stack, count) for stack, count in stacks if not is_idle(stack[0])]
    num_busy = sum(count for _, count in busy)
    if num_busy <= 0:
        raise ValueError(f"every one of {num_samples} stack samples in {path} was idle")
    self_counts, inclusive_counts, by_component = Counter(), Counter(), Counter()
    for stack, count in busy:
        self_counts[stack[0]] += count
        by_component[component(stack[0])] += count
        for location in set(stack):
            inclusive_counts[location] += count
    us_per_sample = 1e6 * router_cpu_s / num_units / num_busy

    def ranked(counts: Counter, keep=lambda location: True) -> list[dict]:
        rows = [(n, loc) for loc, n in counts.most_common() if keep(loc)][:top_n]
        return [{"function": loc, "share_of_busy": round(n / num_busy, 4),
                 f"us_per_{unit}": round(n * us_per_sample, 2)} for n, loc in rows]

    return {
        f"num_{unit}s": num_units, "num_samples": num_samples,
        "idle_share": round(1 - num_busy / num_samples, 4),
        f"router_cpu_us_per_{unit}": round(1e6 * router_cpu_s / num_units, 2),
        f"by_component_us_per_{unit}": {name: round(n * us_per_sample, 2)
                                        for name, n in by_component.most_common()},
        "top_self": ranked(self_counts),
        "top_inclusive_router_code": ranked(inclusive_counts,
                                            lambda loc: loc.startswith(PROJECT_PREFIXES)
                                            and not loc.startswith(ENTRY_POINTS)),
    }


def summarize_pstats(path: Path, num_units: int, unit: str = "token", top_n: int = 15) -> dict:
    """cProfile's top functions by self time, with calls and cumulative time per unit."""
    if num_units <= 0:
        raise ValueError(f"the profiled window relayed no {unit}s ({num_units}); nothing to divide by")
    rows, busy_s = [], 0.0
    for (filename, line, name), (_, num_calls, self_s, cum_s, _) in pstats.Stats(str(path)).stats.items():
        location = name if filename == "~" else f"{short_path(filename)}:{line}({name})"
        if is_idle(location):
            continue
        busy_s += self_s
        rows.append((self_s, cum_s, num_calls, location))
    per_unit = 1e6 / num_units

    def ranked(key) -> list[dict]:
        return [{"function": location, f"self_us_per_{unit}": round(self_s * per_unit, 2),
                 f"cum_us_per_{unit}": round(cum_s * per_unit, 2),
                 f"calls_per_{unit}": round(num_calls / num_units, 3)}
                for self_s, cum_s, num_calls, location in sorted(rows, key=key, reverse=True)[:top_n]]

    return {
        f"num_{unit}s": num_units, f"busy_us_per_{unit}": round(busy_s * per_unit, 2),
        "top_self": ranked(lambda row: row[0]),
        "top_cumulative_router_code": ranked(
            lambda row: row[1] if row[3].startswith(PROJECT_PREFIXES) and not row[3].startswith(ENTRY_POINTS)
            else -1.0),
    }
