"""Part 1 of the router benchmark: the latency the router adds, against the decode worker called directly.

One decode worker behind one router, every request colocated. At each concurrency, bursts of
streams (one per prompt, all at once) alternate between the router and the worker in ABBA order, so
that drifts in the shared machine's load hit both alike; the first burst of each is a warm-up.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from router_load import DirectTarget, RouterTarget, burst, latency_summary, process_cpu_seconds
from router_setup import Settings, cluster_config, subfolder

from tandem.local_cluster import LocalCluster

GOAL_MS = {"p50": 1.0, "p99": 5.0}
METRICS = ("ttft", "itl")


def latency_part(model_dir: Path, run_dir: Path, settings: Settings, prompts: list[list[int]],
                 also_on_cluster=None) -> tuple[dict, object]:
    """Router against direct latency at each concurrency; also_on_cluster(cluster), when given,
    runs on the same cluster afterwards and its result is returned second."""
    with LocalCluster(cluster_config(model_dir, 1), subfolder(run_dir, "latency-cluster")) as cluster:
        decode_address = cluster.worker_address(cluster.decode[0])
        entries = asyncio.run(_runs(cluster.grpc_address, decode_address, cluster.worker_token,
                                    cluster.router.process.pid, settings, prompts))
        extra = also_on_cluster(cluster) if also_on_cluster is not None else None
    return {"by_concurrency": entries}, extra


async def _runs(router_address: str, decode_address: str, worker_token: str, router_pid: int,
                settings: Settings, prompts: list[list[int]]) -> list[dict]:
    router, direct = RouterTarget(router_address), DirectTarget(decode_address, worker_token)
    entries = []
    try:
        for concurrency in settings.concurrencies:
            batch = prompts[:concurrency]
            for target in (router, direct):  # warm-up: channels, prefix cache, code paths
                await burst(target, batch, settings.max_tokens)
            num_rounds = max(settings.min_rounds, -(-settings.min_ttft_samples // concurrency))
            streams = {"router": [], "direct": []}
            router_cpu_s = 0.0
            for round_index in range(num_rounds):
                order = (router, direct) if round_index % 2 == 0 else (direct, router)
                for target in order:
                    cpu_before = process_cpu_seconds(router_pid)
                    streams[target.name] += await burst(target, batch, settings.max_tokens)
                    if target is router:
                        router_cpu_s += process_cpu_seconds(router_pid) - cpu_before
            entries.append(_entry(concurrency, num_rounds, streams, router_cpu_s))
    finally:
        await router.channel.close()
        await direct.channel.close()
    return entries


def _entry(concurrency: int, num_rounds: int, streams: dict, router_cpu_s: float) -> dict:
    summary = {}
    for name, timings in streams.items():
        summary[name] = {
            "ttft": latency_summary([t.ttft_s for t in timings if t.ttft_s is not None]),
            "itl": latency_summary([gap for t in timings for gap in t.itl_s]),
            "num_tokens": sum(t.num_tokens for t in timings)}
    added = {f"{metric}_{q}_ms": round(summary["router"][metric][f"{q}_ms"]
                                       - summary["direct"][metric][f"{q}_ms"], 3)
             for metric in METRICS for q in GOAL_MS}
    num_router_tokens = summary["router"]["num_tokens"]
    return {"concurrency": concurrency, "num_rounds": num_rounds, **summary, "added": added,
            "meets_goal": all(added[f"{m}_{q}_ms"] < GOAL_MS[q] for m in METRICS for q in GOAL_MS),
            "router_cpu_us_per_token": round(1e6 * router_cpu_s / num_router_tokens, 2)}


def worst_added(latency: dict) -> dict:
    """The largest added latency over the concurrencies, per metric and percentile."""
    return {key: max(entry["added"][key] for entry in latency["by_concurrency"])
            for key in latency["by_concurrency"][0]["added"]}
