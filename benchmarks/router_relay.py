"""Parts 2 and 3 of the router benchmark: tokens/s one router relays, and where its CPU goes.

For each chunk size, synthetic decode workers (router_token_source.py) feed a router and, beside
it, the bare relay (router_bare_relay.py: the floor of any Python grpc.aio relay). Each window is a
warm-up plus a measured stretch of sustained load; router and bare-relay windows alternate (ABBA)
and the median window counts: tokens per relay CPU-second is the relay capacity. At 1 token per
chunk, router and bare relay also take one-token requests (the per-request cost), and the same
router then runs a stack-sampled and a cProfile window for each kind of request, and with --perf a
natively sampled window.
Real tiny-model decode workers give the same figures where the engine, not the router, is the limit.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from router_hotspots import summarize_pstats, summarize_samples
from router_load import RouterTarget, SustainedResult, sustained
from router_perf import start_perf, stop_perf, summarize_perf
from router_profile import request_window
from router_setup import (READY_TIMEOUT_S, Settings, address, bare_relay_command, cluster_config,
                          router_command, start_process, subfolder, token_source_command)

from tandem.local_cluster import LocalCluster
from tandem.serving.process_group import ChildProcess, stop_children, wait_ready
from tandem.serving.worker_auth import write_token_file

GOAL_TOKENS_PER_S = 20_000
# The profiled router's windows after the unprofiled one: (profiler, requests' max_tokens or None
# for the relay's). Indices in this plan name the files router_profile writes.
PROFILE_PLAN = (("sample", None), ("cprofile", None), ("sample", 1), ("cprofile", 1))


def relay_part(model_dir: Path, run_dir: Path, settings: Settings, prompts: list[list[int]],
               real: dict | None, use_perf: bool) -> tuple[dict, dict]:
    """Relay capacity for each chunk size and for real workers (unless given), and the profile."""
    token_sources, profile = [], {}
    for tokens_per_chunk in settings.tokens_per_chunk:
        is_profiled = tokens_per_chunk == 1
        relay, run_profile = _token_source_run(model_dir, run_dir, settings, prompts, tokens_per_chunk,
                                               is_profiled, use_perf and is_profiled)
        token_sources.append(relay)
        profile = run_profile or profile
    if real is None:
        with LocalCluster(cluster_config(model_dir, settings.num_real_workers),
                          subfolder(run_dir, "relay-cluster")) as cluster:
            real = real_worker_relay(cluster, settings, prompts)
    headline = next(r for r in token_sources if r["tokens_per_chunk"] == 1)["router"]
    capacity = {"tokens_per_router_cpu_s": headline["tokens_per_router_cpu_s"],
                "raw_tokens_per_s": headline["tokens_per_s"],
                "goal_tokens_per_s": GOAL_TOKENS_PER_S,
                "by_tokens_per_chunk": token_sources, "real_decode_workers": real}
    return capacity, profile


def real_worker_relay(cluster: LocalCluster, settings: Settings, prompts: list[list[int]]) -> dict:
    """Sustained load through a cluster's router onto its real decode workers."""
    pids = {"router": [cluster.router.process.pid],
            "decode_workers": [child.process.pid for child in cluster.decode]}
    windows = [asyncio.run(_window(cluster.grpc_address, settings, prompts, pids, settings.relay_max_tokens))
               for _ in range(settings.relay_rounds)]
    return {"num_decode_workers": len(cluster.decode), **median_summary(windows)}


def median_summary(windows: list[SustainedResult]) -> dict:
    """The median window's headline figures, and every window's figures."""
    per_window = [w.as_dict() for w in windows]
    return {"num_windows": len(windows),
            **{key: statistics.median(w[key] for w in per_window)
               for key in ("tokens_per_router_cpu_s", "router_cpu_us_per_token", "tokens_per_s")},
            "per_window": per_window}


def _token_source_run(model_dir: Path, run_dir: Path, settings: Settings, prompts: list[list[int]],
                      tokens_per_chunk: int, is_profiled: bool, use_perf: bool) -> tuple[dict, dict]:
    sources = [start_process(f"token-source-{tokens_per_chunk}-{i}",
                             token_source_command(model_dir, tokens_per_chunk), run_dir)
               for i in range(settings.num_token_sources)]
    profile_dir = subfolder(run_dir, f"profiles-{tokens_per_chunk}") if is_profiled else None
    relays = []
    try:
        wait_ready(sources, READY_TIMEOUT_S)
        addresses = [address(s) for s in sources]
        plan = tuple(kind for kind, _ in PROFILE_PLAN) if is_profiled else ()
        token_file = write_token_file(run_dir / f"worker-token-tpc{tokens_per_chunk}")
        router = start_process(f"router-tpc{tokens_per_chunk}",
                               router_command(model_dir, addresses, token_file, profile_dir, plan), run_dir)
        relays.append(router)
        bare = start_process(f"bare-relay-tpc{tokens_per_chunk}", bare_relay_command(addresses), run_dir)
        relays.append(bare)
        wait_ready(relays, READY_TIMEOUT_S)
        source_pids = [s.process.pid for s in sources]
        router_windows, bare_windows = _alternating_windows(router, bare, settings, prompts, source_pids,
                                                            settings.relay_max_tokens, settings.relay_rounds)
        if is_profiled:  # one-token requests: what setting a request up and tearing it down costs
            per_request = _alternating_windows(router, bare, settings, prompts, source_pids, 1,
                                               max(1, settings.relay_rounds // 2))
        pids = {"router": [router.process.pid], "token_sources": source_pids}
        profiled = _profile_windows(router, settings, prompts, pids, profile_dir) if is_profiled else []
        perf = _perf_window(router, settings, prompts, pids, profile_dir) if use_perf else None
    finally:
        stop_children(relays)
        stop_children(sources)
    relay = {"tokens_per_chunk": tokens_per_chunk, "num_token_sources": settings.num_token_sources,
             "router": median_summary(router_windows), "bare_grpc_aio_relay": median_summary(bare_windows)}
    relay["router_over_bare_cpu_per_token"] = _cpu_ratio(relay)
    if not is_profiled:
        return relay, {}
    one_token = {"router": median_summary(per_request[0]),
                 "bare_grpc_aio_relay": median_summary(per_request[1]),
                 "note": "each request relays one token: CPU us per token is CPU us per request"}
    relay["one_token_requests"] = {**one_token, "router_over_bare_cpu_per_request": _cpu_ratio(one_token)}
    profile = _profile_report(profile_dir, profiled)
    if perf is not None:
        profile["perf_native_per_token"] = summarize_perf(profile_dir / "perf.data",
                                                          perf.as_dict()["router_cpu_us_per_token"])
    return relay, profile


def _cpu_ratio(relay: dict) -> float:
    return round(relay["router"]["router_cpu_us_per_token"]
                 / relay["bare_grpc_aio_relay"]["router_cpu_us_per_token"], 2)


def _alternating_windows(router: ChildProcess, bare: ChildProcess, settings: Settings,
                         prompts: list[list[int]], source_pids: list[int], max_tokens: int, num_rounds: int):
    """Router and bare-relay windows in ABBA order, so that the machine's drifts hit both alike."""
    results = {"router": [], "bare": []}
    for round_index in range(num_rounds):
        order = ("router", "bare") if round_index % 2 == 0 else ("bare", "router")
        for name in order:
            child = router if name == "router" else bare
            # The bare relay is in the router's place: its CPU is counted as "router".
            pids = {"router": [child.process.pid], "token_sources": source_pids}
            results[name].append(asyncio.run(_window(address(child), settings, prompts, pids, max_tokens)))
    return results["router"], results["bare"]


def _profile_windows(router: ChildProcess, settings: Settings, prompts: list[list[int]], pids: dict,
                     profile_dir: Path) -> list[SustainedResult]:
    """One window per profiler of PROFILE_PLAN, each switched on and off inside the router."""
    pid = router.process.pid
    windows = []
    for index, (kind, max_tokens) in enumerate(PROFILE_PLAN):
        windows.append(asyncio.run(_window(
            address(router), settings, prompts, pids, max_tokens or settings.relay_max_tokens,
            lambda is_open, index=index: request_window(profile_dir, pid, index, is_open))))
        suffix = "json" if kind == "sample" else "pstats"
        _wait_for_file(profile_dir / f"window-{index}.{suffix}", router)
    return windows


def _perf_window(router: ChildProcess, settings: Settings, prompts: list[list[int]], pids: dict,
                 profile_dir: Path) -> SustainedResult:
    """A window sampled natively by Linux perf (no Python profiler running)."""
    running = []

    def switch(is_open: bool) -> None:
        if is_open:
            running.append(start_perf(router.process.pid, profile_dir / "perf.data"))
        else:
            stop_perf(running.pop())

    return asyncio.run(_window(address(router), settings, prompts, pids, settings.relay_max_tokens, switch))


async def _window(router_address: str, settings: Settings, prompts: list[list[int]],
                  pids: dict[str, list[int]], max_tokens: int, on_window=None) -> SustainedResult:
    """One warm-up and one measured window of sustained load; on_window(is_open) at its ends."""
    target = RouterTarget(router_address)
    try:
        return await sustained(target, prompts, max_tokens, settings.relay_streams, settings.warmup_s,
                               settings.window_s, pids, on_window)
    finally:
        await target.channel.close()


def _profile_report(profile_dir: Path, windows: list[SustainedResult]) -> dict:
    sampled, profiled, sampled_requests, profiled_requests = windows
    per_token = summarize_pstats(profile_dir / "window-1.pstats", profiled.num_tokens)
    per_token["router_cpu_us_per_token_under_cprofile"] = profiled.as_dict()["router_cpu_us_per_token"]
    per_request = summarize_pstats(profile_dir / "window-3.pstats", profiled_requests.num_streams_finished,
                                   unit="request")
    per_request["router_cpu_us_per_request_under_cprofile"] = round(
        1e6 * profiled_requests.cpu_s["router"] / profiled_requests.num_streams_finished, 2)
    return {
        "stack_samples_per_token": summarize_samples(profile_dir / "window-0.json", sampled.num_tokens,
                                                     sampled.cpu_s["router"]),
        "cprofile_per_token": per_token,
        "stack_samples_per_request": summarize_samples(
            profile_dir / "window-2.json", sampled_requests.num_streams_finished,
            sampled_requests.cpu_s["router"], unit="request"),
        "cprofile_per_request": per_request,
    }


def _wait_for_file(path: Path, child: ChildProcess, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if not child.is_alive or time.monotonic() > deadline:
            raise RuntimeError(f"the profiled router wrote no {path.name}; see {child.log_path}")
        time.sleep(0.1)
