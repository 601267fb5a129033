"""Autoscaling on scraped metrics, end to end: the minimal example on CPU with the operator's
autoscaler on, bounded loads from the test, and the pools followed through the API.

Decode capacity is two sequences per replica. The ramp's overlapping streams have short prompts,
which the decode pods prefill themselves (conditional disaggregation): they must grow the decode
pool and leave the prefill pool alone. When the ramp ends, a light load (two streams: one pod's
capacity) keeps running across the scale-down, so the removed decode pod still serves a stream
when it is told to stop, and every request must end OK (the worker drains before it exits).
Then long prompts, which go through the prefill pool, grow that pool; with the load gone both
pools are back to one pod. Pod counts are sampled every second and written with every request's
outcome to `autoscaling.json` in the test's tmp dir; `-s` prints them as a table.

The latency path has its own test: capacity that never asks for a second pod and an inter-token
SLO no CPU worker meets, so only the router's ITL histogram, scraped from the router pod and
attributed to the decode pool by model, can grow that pool.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import aiohttp
import openai
import pytest

from tests.cluster.api import DEPLOYMENTS, PODS
from tests.cluster.cluster import Cluster
from tests.e2e_k8s.conftest import NAMESPACE
from tests.e2e_k8s.test_faults import scrape
from tests.e2e_k8s.test_install import API_KEY, condition, install_minimal, td_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

AUTOSCALING = {
    "enabled": True, "intervalSeconds": 2,
    # Latency SLOs out of reach of a loaded CPU: capacity alone decides here.
    "ttftSloSeconds": 60, "itlSloSeconds": 30,
    "scaleUpStabilizationSeconds": 2, "scaleDownStabilizationSeconds": 8,
    "maxScaleUpStep": 1, "maxScaleDownStep": 1, "metrics": {"source": "scrape"},
}
# Two sequences fill a decode pod; a pool may shrink when its load fits the smaller size exactly.
DECODE = {"minReplicas": 1, "maxReplicas": 2,
          "capacity": {"maxSequences": 2, "scaleDownHeadroom": 1.0}}
# Any stream of long prompts is more than one prefill pod's stated capacity; short prompts never
# reach the prefill pool.
PREFILL = {"minReplicas": 1, "maxReplicas": 2, "capacity": {"prefillTokensPerSecond": 200}}
NUM_RAMP_STREAMS = 6  # 6 sequences at 2 per replica: more than one decode pod holds
NUM_LIGHT_STREAMS = 2  # exactly one decode pod's capacity: the pool may shrink under it
NUM_LONG_PROMPT_STREAMS = 2
MAX_TOKENS = {"ramp": 160, "scale-down": 400, "prefill-ramp": 4, "itl": 200}
LONG_PROMPT_WORDS = 120  # about 700 tokens: above the router's 512-token disaggregation threshold
CLIENT_TIMEOUT_S = 120  # far longer than any request here takes: reaching it means it hung



async def ready_router_client(cluster: Cluster, name: str) -> openai.AsyncOpenAI:
    """Waits for the TandemDeployment to be Ready; an OpenAI client at its router pod."""
    await cluster.wait_for(lambda: condition(td_status(cluster, name), "Ready").get("status")
                           == "True", f"{name} Ready", timeout_s=300)
    http = (await cluster.wait_for(
        lambda: cluster.ready_addresses(NAMESPACE, f"{name}-router", "http"), "the router"))[0]
    return openai.AsyncOpenAI(base_url=f"http://{http}/v1", api_key=API_KEY,
                              timeout=CLIENT_TIMEOUT_S, max_retries=0)

class Timeline:
    """Ready/desired pods per pool, sampled every second, and the streams in flight."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster, self.name = cluster, name
        self.start = time.monotonic()
        self.samples: list[dict] = []
        self.num_in_flight = 0
        self.phase = "install"
        self.removed: dict[str, dict] = {}  # decode pods marked for deletion: streams they ran then
        self._scrapes: set[asyncio.Task] = set()

    def pods(self, role: str) -> tuple[int, int]:
        """(ready, desired) of one pool, from its pods and its Deployment."""
        ready = sum(1 for pod in self.cluster.api.items(PODS, NAMESPACE)
                    if pod["metadata"]["labels"].get("tandem.dev/role") == role
                    and not pod["metadata"].get("deletionTimestamp")
                    and any(c["type"] == "Ready" and c["status"] == "True"
                            for c in (pod.get("status") or {}).get("conditions") or []))
        deployment = self.cluster.api.get(DEPLOYMENTS, NAMESPACE, f"{self.name}-default-{role}")
        return ready, (deployment or {}).get("spec", {}).get("replicas", 0)

    async def run(self) -> None:
        """Samples every second until cancelled."""
        while True:
            for pod in self.cluster.api.items(PODS, NAMESPACE):
                meta = pod["metadata"]
                if (meta["labels"].get("tandem.dev/role") == "decode"
                        and meta.get("deletionTimestamp") and meta["name"] not in self.removed):
                    self.removed[meta["name"]] = {"t": round(time.monotonic() - self.start, 1)}
                    task = asyncio.create_task(self._running_on(pod))
                    self._scrapes.add(task)
                    task.add_done_callback(self._scrapes.discard)
            self.sample()
            await asyncio.sleep(1.0)

    def sample(self) -> None:
        """Records the pools now."""
        (pr, pd), (dr, dd) = self.pods("prefill"), self.pods("decode")
        self.samples.append({"t": round(time.monotonic() - self.start, 1), "phase": self.phase,
                             "prefill_ready": pr, "prefill_desired": pd, "decode_ready": dr,
                             "decode_desired": dd, "in_flight": self.num_in_flight})

    async def _running_on(self, pod: dict) -> None:
        # The removed pod drains: its metrics port still answers until the process exits.
        record = self.removed[pod["metadata"]["name"]]
        try:
            record["running"] = await scrape(pod, "tandem_running_requests")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # it may have exited already
            record["running"] = f"unreadable: {exc!r}"

    def table(self) -> str:
        """Rows where anything changed, as `t  phase  prefill r/d  decode r/d  in flight`."""
        rows, last = ["    t  phase         prefill  decode  in-flight"], None
        for s in self.samples:
            key = (s["phase"], s["prefill_ready"], s["prefill_desired"], s["decode_ready"],
                   s["decode_desired"], s["in_flight"])
            if key != last:
                rows.append(f"{s['t']:5.0f}  {s['phase']:<12}  "
                            f"{s['prefill_ready']}/{s['prefill_desired']}      "
                            f"{s['decode_ready']}/{s['decode_desired']}     {s['in_flight']}")
                last = key
        return "\n".join(rows)


async def stream_until(client: openai.AsyncOpenAI, model: str, stop: asyncio.Event,
                       timeline: Timeline, outcomes: list[dict], phase: str, worker: int) -> None:
    """Streams one request after another until `stop` is set, recording each outcome."""
    seq = 0
    while not stop.is_set():
        seq += 1
        started = time.monotonic() - timeline.start
        record = {"phase": phase, "stream": worker, "seq": seq, "start_t": round(started, 1)}
        timeline.num_in_flight += 1
        num_chunks, finish = 0, None
        try:
            stream = await client.chat.completions.create(
                model=model, max_tokens=MAX_TOKENS[phase], stream=True, temperature=1.0,
                seed=1000 * worker + seq, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": _prompt(phase, worker, seq)}])
            async for chunk in stream:
                if chunk.choices:
                    num_chunks += bool(chunk.choices[0].delta.content)
                    finish = chunk.choices[0].finish_reason or finish
                if chunk.usage is not None:
                    record["prompt_tokens"] = chunk.usage.prompt_tokens
            is_finished = finish in ("stop", "length")
            record["outcome"] = f"OK {finish}" if is_finished else f"NO FINISH {finish}"
        except openai.APIError as exc:
            record["outcome"] = f"ERROR {type(exc).__name__}: {exc}"
        finally:
            timeline.num_in_flight -= 1
        record.update(chunks=num_chunks, end_t=round(time.monotonic() - timeline.start, 1))
        outcomes.append(record)


async def run_load(client, model: str, timeline: Timeline, outcomes: list[dict], phase: str,
                   num_streams: int, until, what: str, timeout_s: float) -> None:
    """`num_streams` back-to-back streams until `until()` holds; then waits for all to end."""
    timeline.phase = phase
    stop = asyncio.Event()
    tasks = [asyncio.create_task(stream_until(client, model, stop, timeline, outcomes, phase, i))
             for i in range(num_streams)]
    try:
        await timeline.cluster.wait_for(until, what, timeout_s=timeout_s)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_each_pool_scales_with_its_phase_load_and_scale_down_fails_no_request(
        cluster: Cluster, operator, tmp_path):
    example = await install_minimal(cluster, tmp_path)
    name, model = example["metadata"]["name"], example["spec"]["model"]["name"]
    spec = example["spec"]
    await cluster.apply({**example, "spec": {
        "autoscaling": AUTOSCALING, "prefill": {**spec["prefill"], **PREFILL},
        "decode": {**spec["decode"], **DECODE}}}, NAMESPACE)
    timeline = Timeline(cluster, name)
    sampler = asyncio.create_task(timeline.run())
    outcomes: list[dict] = []
    try:
        client = await ready_router_client(cluster, name)

        # The ramp: overlapping long streams, more than one decode pod's capacity.
        await run_load(client, model, timeline, outcomes, "ramp", NUM_RAMP_STREAMS,
                       lambda: timeline.pods("decode") == (2, 2),
                       "the decode pool scaled up to 2 ready pods", timeout_s=240)
        # Light load across the scale-down: the pool shrinks back while streams run on it.
        await run_load(client, model, timeline, outcomes, "scale-down", NUM_LIGHT_STREAMS,
                       lambda: timeline.pods("decode") == (1, 1)
                       and _num_pods(cluster, "decode") == 1,
                       "the decode pool back to 1 pod after the stabilisation window",
                       timeout_s=240)
        # Long prompts: prefill work, which the prefill pool takes.
        await run_load(client, model, timeline, outcomes, "prefill-ramp", NUM_LONG_PROMPT_STREAMS,
                       lambda: timeline.pods("prefill") == (2, 2),
                       "the prefill pool scaled up to 2 ready pods", timeout_s=240)
        timeline.phase = "idle"
        await cluster.wait_for(lambda: timeline.pods("prefill") == (1, 1) == timeline.pods("decode")
                               and _num_pods(cluster, "prefill") == 1,
                               "both pools back to 1 pod", timeout_s=240)
        await client.close()
        decisions = td_status(cluster, name).get("autoscaling", {}).get("pools", [])
    finally:
        sampler.cancel()
        timeline.sample()
        report = {"samples": timeline.samples, "requests": outcomes,
                  "removed_decode_pods": timeline.removed,
                  "settings": {"autoscaling": AUTOSCALING, "decode": DECODE, "prefill": PREFILL,
                               "streams": {"ramp": NUM_RAMP_STREAMS,
                                           "scale-down": NUM_LIGHT_STREAMS,
                                           "prefill-ramp": NUM_LONG_PROMPT_STREAMS},
                               "max_tokens": MAX_TOKENS}}
        (tmp_path / "autoscaling.json").write_text(json.dumps(report, indent=1))
        print(f"\npod counts (ready/desired) when anything changed:\n{timeline.table()}")
        print(f"removed decode pods (streams running on each when it was told to stop): "
              f"{timeline.removed}")
        print(f"requests: {_summary(outcomes)}; written to {tmp_path / 'autoscaling.json'}")

    failed = [o for o in outcomes if not o["outcome"].startswith("OK ")]
    assert not failed, f"requests that did not end OK: {failed}"
    assert [o for o in outcomes if o["phase"] == "scale-down"], "no request across the scale-down"
    # The scale-down removed a pod that was serving: it drained that stream before it exited.
    assert any(isinstance(r.get("running"), float) and r["running"] >= 1
               for r in timeline.removed.values()), timeline.removed
    # Short prompts never grew the prefill pool; long ones did (the ramp ends as its second pod
    # turns ready), and the pool shrank after.
    assert _prefill_pods(timeline, "ramp", "scale-down") == {(1, 1)}
    assert (2, 2) in _prefill_pods(timeline, "prefill-ramp", "idle")
    assert timeline.samples[-1]["prefill_desired"] == 1
    assert max(s["decode_desired"] for s in timeline.samples) == 2
    assert all(o.get("prompt_tokens", 0) > 512 for o in outcomes if o["phase"] == "prefill-ramp")
    modes = {d["phase"]: d.get("mode") for d in decisions}
    assert modes == {"prefill": "operator", "decode": "operator"}


def _prefill_pods(timeline: Timeline, *phases: str) -> set[tuple[int, int]]:
    # (ready, desired) prefill pods seen during the phases.
    return {(s["prefill_ready"], s["prefill_desired"]) for s in timeline.samples
            if s["phase"] in phases}


def _prompt(phase: str, worker: int, seq: int) -> str:
    if phase != "prefill-ramp":
        return f"Tell story {worker}-{seq}."
    # Distinct words per request: no cached prefix shortens what the prefill pod computes.
    words = random.Random(1000 * worker + seq)
    return " ".join(f"{words.choice(('red', 'kite', 'river', 'stone'))}{words.randrange(1000)}"
                    for _ in range(LONG_PROMPT_WORDS))


def _num_pods(cluster: Cluster, role: str) -> int:
    # Every pod object, terminating ones included: a scale-down has finished when the removed
    # pod is gone (drained and exited), not when it is marked for deletion.
    return sum(1 for pod in cluster.api.items(PODS, NAMESPACE)
               if pod["metadata"]["labels"].get("tandem.dev/role") == role)


def _summary(outcomes: list[dict]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        key = f"{o['phase']} {o['outcome'].split(':')[0]}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{key}: {n}" for key, n in sorted(counts.items()))


async def test_a_pool_in_external_mode_keeps_the_size_an_hpa_gives_it(cluster: Cluster, operator,
                                                                      tmp_path):
    example = await install_minimal(cluster, tmp_path)
    name = example["metadata"]["name"]
    pool = f"{name}-default-decode"
    external = {**example["spec"]["decode"], "scaling": "external", "replicas": 1}
    await cluster.apply({**example, "spec": {"autoscaling": AUTOSCALING, "decode": external}},
                        NAMESPACE)
    timeline = Timeline(cluster, name)
    await cluster.wait_for(lambda: condition(td_status(cluster, name), "Ready").get("status")
                           == "True", f"{name} Ready", timeout_s=300)
    # As an HPA does: through the Deployment's scale subresource.
    await cluster.api.patch(DEPLOYMENTS, NAMESPACE, pool, {"spec": {"replicas": 2}},
                            subresource="scale")
    await cluster.wait_for(lambda: timeline.pods("decode") == (2, 2), "the HPA's second decode pod",
                           timeout_s=240)
    # A spec edit (a new start size, which only counts at creation) and many operator ticks later,
    # the pool still has the HPA's size.
    await cluster.apply({**example, "spec": {"decode": {**external, "replicas": 3}}}, NAMESPACE)
    await cluster.wait_for(lambda: td_status(cluster, name).get("observedGeneration")
                           == _generation(cluster, example), "the edited spec reconciled")
    ticks: set[str] = set()

    def num_ticks() -> int:
        ticks.update(d["time"] for d in td_status(cluster, name)["autoscaling"]["pools"])
        return len(ticks)

    await cluster.wait_for(lambda: num_ticks() >= 4, "several operator ticks")
    assert timeline.pods("decode") == (2, 2)
    status = td_status(cluster, name)
    assert {w["name"]: w.get("scaling") for w in status["workloads"]} == {
        f"{name}-router": None, f"{name}-default-prefill": "operator", pool: "external"}
    (decode,) = [d for d in status["autoscaling"]["pools"] if d["phase"] == "decode"]
    assert decode["mode"] == "external" and decode["toReplicas"] == 2 and not decode["isChange"]


def _generation(cluster: Cluster, example: dict) -> int:
    resource = cluster.resource_of(example)
    live = cluster.api.get(resource, NAMESPACE, example["metadata"]["name"])
    return live["metadata"]["generation"]


# Capacity alone never asks for a second pod; the inter-token SLO is far below a CPU worker's.
LATENCY_AUTOSCALING = {**AUTOSCALING, "itlSloSeconds": 0.0005}
LATENCY_DECODE = {"minReplicas": 1, "maxReplicas": 2,
                  "capacity": {"maxSequences": 1000, "targetKvUsage": 1.0}}
LATENCY_PREFILL = {"minReplicas": 1, "maxReplicas": 2,
                   "capacity": {"prefillTokensPerSecond": 1_000_000}}
NUM_ITL_STREAMS = 3


async def test_the_routers_inter_token_latency_grows_the_decode_pool(cluster: Cluster, operator,
                                                                     tmp_path):
    example = await install_minimal(cluster, tmp_path)
    name, model = example["metadata"]["name"], example["spec"]["model"]["name"]
    spec = example["spec"]
    await cluster.apply({**example, "spec": {
        "autoscaling": LATENCY_AUTOSCALING, "prefill": {**spec["prefill"], **LATENCY_PREFILL},
        "decode": {**spec["decode"], **LATENCY_DECODE}}}, NAMESPACE)
    timeline = Timeline(cluster, name)
    sampler = asyncio.create_task(timeline.run())
    outcomes: list[dict] = []
    reasons: list[str] = []  # the decode pool's distinct decisions, in order

    def decode_scaled_up() -> bool:
        for decision in td_status(cluster, name).get("autoscaling", {}).get("pools", []):
            if decision["phase"] == "decode" and decision["reason"] not in reasons[-1:]:
                reasons.append(decision["reason"])
        return timeline.pods("decode") == (2, 2)

    try:
        client = await ready_router_client(cluster, name)
        await run_load(client, model, timeline, outcomes, "itl", NUM_ITL_STREAMS,
                       decode_scaled_up, "the decode pool scaled up to 2 ready pods on its ITL",
                       timeout_s=120)
        await client.close()
    finally:
        sampler.cancel()
        timeline.sample()
        print(f"\npod counts (ready/desired) when anything changed:\n{timeline.table()}")
        print("decode decisions:\n" + "\n".join(reasons))
        print(f"requests: {_summary(outcomes)}")

    failed = [o for o in outcomes if not o["outcome"].startswith("OK ")]
    assert outcomes and not failed, f"requests that did not end OK: {failed}"
    assert any(r.startswith("scale up 1->2: observed inter-token P90") for r in reasons), reasons
    assert {(s["prefill_ready"], s["prefill_desired"]) for s in timeline.samples
            if s["phase"] == "itl"} == {(1, 1)}
