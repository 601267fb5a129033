"""After the last fault: every restarted worker serves again, and new requests complete.

The router finds static workers by address and re-admits one as soon as a load poll succeeds, so
a worker restarted on its old port must get work again. Fresh prompts (no cached prefix anywhere,
long enough to be disaggregated) are sent in small concurrent waves while each restarted worker's
load (and a prefill worker's token counter) is watched until it shows a request of its own.
"""

from __future__ import annotations

import asyncio
import random

import aiohttp
import grpc

from tests.faults.clients import Outcome, now, send_grpc
from tests.faults.probes import get_load, metric_total, scrape
from tests.faults.request_body import PromptSpec, RequestBody

WAVE_SIZE = 4
# How long restarted workers get to come back into use (after they are ready again).
REJOIN_WAIT_S = 30.0
DEADLINE_S = 20.0
PREFILL_TOKENS_METRIC = "tandem_prefill_tokens_total"


async def check_rejoin(cluster, restarted: list[str], channel: grpc.aio.Channel,
                       session: aiohttp.ClientSession, api_key: str, model_name: str, vocab_size: int,
                       seed: int, margin_s: float) -> list[str]:
    """Problems found: a restarted worker that got no work, or a request after the faults that failed."""
    problems: list[str] = []
    is_seen = {name: False for name in restarted}
    done = asyncio.Event()
    watcher = asyncio.create_task(_watch(cluster, is_seen, done))
    rng = random.Random(seed)
    num_sent = 0
    started = now()
    try:
        while now() - started < REJOIN_WAIT_S:
            outcomes = [Outcome(-1, started_at=now()) for _ in range(WAVE_SIZE)]
            await asyncio.gather(*(send_grpc(channel, _fresh_body(rng, api_key, model_name, vocab_size),
                                             outcome, DEADLINE_S + margin_s, None, None)
                                   for outcome in outcomes))
            num_sent += WAVE_SIZE
            problems += [f"a request after the last fault ended {o.status}: {o.message[:200]}"
                         for o in outcomes if o.status != "OK" or set(o.finish_reasons.values())
                         - {"STOP", "LENGTH"}]
            await _count_prefills(cluster, is_seen, session)
            if all(is_seen.values()):
                break
    finally:
        done.set()
        await watcher
    problems += [f"{name} was restarted on its old address but got none of the {num_sent} requests "
                 f"sent in the {REJOIN_WAIT_S:.0f}s after the last fault" for name, seen in is_seen.items()
                 if not seen]
    return problems


def _fresh_body(rng: random.Random, api_key: str, model_name: str, vocab_size: int) -> RequestBody:
    ids = tuple(rng.randrange(3, vocab_size) for _ in range(rng.randint(40, 160)))
    return RequestBody(api_key=api_key, model=model_name, prompt=PromptSpec(-1, "tokens", ids),
                       max_tokens=32, deadline_s=DEADLINE_S)


async def _count_prefills(cluster, is_seen: dict[str, bool], session: aiohttp.ClientSession) -> None:
    # A prefill takes milliseconds: its token counter (which restarts at 0 with the process) sees
    # what a load poll may miss.
    for name in [n for n, seen in is_seen.items() if not seen and n.startswith("prefill")]:
        samples = await scrape(session, cluster.metrics_url(name))
        if metric_total(samples, PREFILL_TOKENS_METRIC) > 0:
            is_seen[name] = True


async def _watch(cluster, is_seen: dict[str, bool], done: asyncio.Event) -> None:
    metadata = cluster.worker_metadata()
    while not done.is_set():
        for name in [n for n, seen in is_seen.items() if not seen]:
            try:
                load = await get_load(cluster.address(name), name.startswith("decode"), metadata)
            except grpc.aio.AioRpcError:
                continue
            if load.num_running + load.num_waiting > 0 or load.num_kv_blocks_used > 0:
                is_seen[name] = True
        await asyncio.sleep(0.05)
