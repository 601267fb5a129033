"""Load for the router benchmark: asyncio gRPC streams with per-token timing, and process CPU time.

Two targets take the same work: `RouterTarget` calls the router's public `Inference/Generate`,
`DirectTarget` calls a decode worker's `DecodeWorker/Decode` colocated, with the request the router
itself would send (same prompt, greedy sampling, same max_tokens). A stream's time to first token
runs from the call to the first message that carries a token; its inter-token latencies are the
gaps between token-bearing messages, divided by the tokens each message carries.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from tandem.api.v1 import inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc
from tandem.serving.worker_auth import worker_token_interceptors

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


@dataclass(slots=True)
class StreamTiming:
    """Timing of one finished stream."""

    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    num_tokens: int = 0


class RouterTarget:
    """Streams requests through the router's gRPC API."""

    name = "router"

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)

    def call(self, prompt: list[int], max_tokens: int):
        """The response stream of one greedy request."""
        return self.stub.Generate(inference_pb2.GenerateRequest(
            tokens=inference_pb2.TokenInput(token_ids=prompt),
            sampling=inference_pb2.SamplingParams(temperature=0.0),
            budget=inference_pb2.Budget(max_tokens=max_tokens)))


class DirectTarget:
    """Streams the same requests straight to a decode worker (colocated Decode)."""

    name = "direct"

    def __init__(self, address: str, worker_token: str) -> None:
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS,
                                                 interceptors=worker_token_interceptors(worker_token))
        self.stub = worker_pb2_grpc.DecodeWorkerStub(self.channel)
        self._request_ids = itertools.count()

    def call(self, prompt: list[int], max_tokens: int):
        """The chunk stream of one greedy colocated request (what the router would send)."""
        return self.stub.Decode(worker_pb2.DecodeRequest(
            request_id=f"bench-direct-{os.getpid()}-{next(self._request_ids)}",
            prompt_token_ids=prompt, colocated=True,
            sampling=inference_pb2.SamplingParams(temperature=0.0, n=1),
            budget=worker_pb2.DecodeBudget(max_tokens=max_tokens)))


async def timed_stream(target, prompt: list[int], max_tokens: int,
                       on_tokens: Callable[[int], None] | None = None) -> StreamTiming:
    """Runs one stream to its end and times its token-bearing messages."""
    timing = StreamTiming()
    started = time.perf_counter()
    last = started
    async for message in target.call(prompt, max_tokens):
        num_tokens = len(message.token_ids)
        if not num_tokens:
            continue
        now = time.perf_counter()
        if timing.ttft_s is None:
            timing.ttft_s = now - started
        else:
            timing.itl_s.append((now - last) / num_tokens)
        last = now
        timing.num_tokens += num_tokens
        if on_tokens is not None:
            on_tokens(num_tokens)
    return timing


async def burst(target, prompts: list[list[int]], max_tokens: int) -> list[StreamTiming]:
    """Starts one stream per prompt at once and waits for all of them."""
    return await asyncio.gather(*(timed_stream(target, p, max_tokens) for p in prompts))


@dataclass(slots=True)
class SustainedResult:
    """Tokens received and CPU spent inside one measurement window of a sustained load."""

    num_streams: int
    window_s: float
    num_tokens: int
    num_messages: int
    num_streams_finished: int
    cpu_s: dict[str, float]

    def as_dict(self) -> dict:
        """Figures for the JSON report."""
        router_cpu = self.cpu_s["router"]
        us_per_token = round(1e6 * router_cpu / self.num_tokens, 2) if self.num_tokens else None
        return {
            "num_streams": self.num_streams, "window_s": round(self.window_s, 3),
            "num_tokens_relayed": self.num_tokens, "num_messages": self.num_messages,
            "num_streams_finished": self.num_streams_finished,
            "tokens_per_s": round(self.num_tokens / self.window_s, 1),
            "cpu_s": {name: round(value, 3) for name, value in self.cpu_s.items()},
            "cpu_cores_used": {name: round(value / self.window_s, 3) for name, value in self.cpu_s.items()},
            "tokens_per_router_cpu_s": round(self.num_tokens / router_cpu, 1) if router_cpu else None,
            "router_cpu_us_per_token": us_per_token,
        }


class _WindowCounter:
    """Counts what the client receives while a window is open."""

    def __init__(self) -> None:
        self.is_open = False
        self.num_tokens = self.num_messages = self.num_streams_finished = 0

    def on_tokens(self, num_tokens: int) -> None:
        """Counts one message of num_tokens tokens if the window is open."""
        if self.is_open:
            self.num_tokens += num_tokens
            self.num_messages += 1


async def sustained(target, prompts: list[list[int]], max_tokens: int, num_streams: int,
                    warmup_s: float, window_s: float, pids: dict[str, list[int]],
                    on_window: Callable[[bool], None] | None = None) -> SustainedResult:
    """Keeps num_streams streams open (a finished one is replaced at once) and measures a window.

    The window of window_s follows a warm-up of warmup_s. The CPU time of each group of processes
    in pids (and of this client, "client") is read at the window's ends; on_window(True) runs as
    the window opens and on_window(False) as it closes.
    """
    counter = _WindowCounter()

    async def keep_streaming(index: int) -> None:
        while True:
            await timed_stream(target, prompts[index % len(prompts)], max_tokens, counter.on_tokens)
            counter.num_streams_finished += counter.is_open

    tasks = [asyncio.create_task(keep_streaming(i)) for i in range(num_streams)]
    try:
        await asyncio.sleep(warmup_s)
        _raise_if_failed(tasks)
        if on_window is not None:
            on_window(True)
        cpu_before, started = cpu_snapshot(pids), time.perf_counter()
        counter.is_open = True
        await asyncio.sleep(window_s)
        counter.is_open = False
        cpu_after, elapsed = cpu_snapshot(pids), time.perf_counter() - started
        if on_window is not None:
            on_window(False)
        _raise_if_failed(tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_before}
    return SustainedResult(num_streams, elapsed, counter.num_tokens, counter.num_messages,
                           counter.num_streams_finished, cpu)


def _raise_if_failed(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise RuntimeError(f"a load stream failed: {task.exception()!r}") from task.exception()


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process, all its threads (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as file:
        stat = file.read()
    # Fields after the command name (which may hold spaces) start at field 3; utime, stime are 14, 15.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def cpu_snapshot(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each named group of processes, plus this client's own as "client"."""
    snapshot = {name: sum(process_cpu_seconds(pid) for pid in group) for name, group in pids.items()}
    snapshot["client"] = time.process_time()
    return snapshot


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(values_s: list[float]) -> dict:
    """p50 and p99 in milliseconds, with the number of samples."""
    if not values_s:
        raise ValueError("no latency samples: every stream ended before its first token")
    return {"p50_ms": round(1e3 * percentile(values_s, 50), 3),
            "p99_ms": round(1e3 * percentile(values_s, 99), 3), "num_samples": len(values_s)}
