"""One fault-suite run: start the cluster, play the schedule, wait for the dust, check invariants."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc

from tests.faults.clients import Outcome, now, send_grpc, send_http, send_worker
from tests.faults.cluster import FaultCluster, FaultClusterConfig
from tests.faults.fault_plan import KILL
from tests.faults.hostile import KINDS_BY_NAME, hostile_body, worker_call
from tests.faults.injector import CanaryTally, FaultWindow, play_fault
from tests.faults.invariants import RunRecord, Violation, check_run, outcome_class
from tests.faults.probes import (CANARY_METRIC, has_metric, metric_total, scrape, used_blocks,
                                 wait_for_blocks)
from tests.faults.reference import expected_outputs
from tests.faults.rejoin import check_rejoin
from tests.faults.request_body import RequestBody
from tests.faults.schedule import (GOOD_TENANTS, HOSTILE_TENANT, RequestSpec, Schedule, ScheduleConfig,
                                   fault_counts, make_schedule)

log = logging.getLogger(__name__)
TENANT_KEYS = {tenant: f"sk-fault-{tenant}" for tenant in (*GOOD_TENANTS, HOSTILE_TENANT)}
GRPC_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
# The router's default --max-attempts 3 (and --migration-limit 3) survive two lost workers.
MAX_WORKER_LOSSES = 2


@dataclass(slots=True)
class SuiteSettings:
    """What a run holds and how long it waits."""

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # How late after its deadline a request may end (the machine is loaded and shared).
    margin_s: float = 15.0
    # How long blocks may take to come back (an abandoned reservation waits for its lease).
    blocks_wait_s: float = 45.0
    kv_timeout_s: float = 3.0
    lease_seconds: float = 5.0
    num_blocks: int = 512


@dataclass(slots=True)
class SuiteReport:
    """A run's results."""

    seed: int
    schedule: Schedule
    violations: list[Violation]
    outcomes: dict[int, Outcome]
    windows: list[FaultWindow]
    t0: float
    seconds: dict[str, float]
    run_dir: Path
    dropped_errors: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        """The run as JSON-able numbers: requests, outcomes, faults by kind, violations."""
        good, hostile, not_complete = Counter(), Counter(), []
        for spec in self.schedule.requests:
            outcome = self.outcomes[spec.index]
            if spec.kind == "normal":
                cls = outcome_class(spec, outcome)
                good[cls] += 1
                if cls not in ("complete", "client_cancelled"):
                    faults = [f"{w.kind}:{w.target}" for w in self.windows
                              if w.overlaps(outcome.started_at, outcome.ended_at)]
                    not_complete.append(f"{spec.index} {spec.api} {cls} "
                                        f"{outcome.started_at - self.t0:.1f}-{outcome.ended_at - self.t0:.1f}s "
                                        f"during {','.join(faults) or 'no fault'}")
            else:
                hostile[f"{spec.kind}:{outcome.status}"] += 1
        return {"seed": self.seed, "num_requests": len(self.schedule.requests),
                "outcomes_well_behaved": dict(sorted(good.items())),
                "outcomes_hostile": dict(sorted(hostile.items())),
                "well_behaved_not_complete": not_complete,
                "fault_windows": [f"{w.kind}:{w.target} {w.started_at - self.t0:.1f}-"
                                  f"{(w.ended_at or float('nan')) - self.t0:.1f}s" for w in self.windows],
                "faults_injected": fault_counts(self.schedule),
                "num_violations": len(self.violations),
                "violations_by_invariant": dict(Counter(v.invariant for v in self.violations)),
                "violations": [str(v) for v in self.violations],
                "dropped_errors": self.dropped_errors,
                "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
                "run_dir": str(self.run_dir)}

    def failure_text(self) -> str:
        """Seed, violations, fault windows as they happened, and the whole schedule."""
        lines = [f"fault suite seed {self.seed}: {len(self.violations)} violations "
                 f"(replay: benchmarks/fault_suite.py --seeds {self.seed}; logs in {self.run_dir})"]
        lines += [f"  {v}" for v in self.violations]
        lines.append("fault windows (seconds from the start):")
        for w in self.windows:
            end = f"{w.ended_at - self.t0:.2f}" if w.ended_at is not None else "never"
            lines.append(f"  {w.kind} {w.target}: {w.started_at - self.t0:.2f} -> {end} {w.error}")
        lines.append("router log, worker health:")
        lines += [f"  {line}" for line in _health_lines(self.run_dir / "router.log")]
        lines.append(self.schedule.describe())
        return "\n".join(lines)


def run_fault_suite(seed: int, model_dir: Path, run_dir: Path, settings: SuiteSettings | None = None,
                    engine=None) -> SuiteReport:
    """Runs one seed on a fresh cluster; engine is the reference LLMEngine (built when None)."""
    return asyncio.run(_run(seed, Path(model_dir), Path(run_dir), settings or SuiteSettings(), engine))


async def _run(seed: int, model_dir: Path, run_dir: Path, settings: SuiteSettings, engine) -> SuiteReport:
    began = time.monotonic()
    if engine is None:
        engine = await asyncio.to_thread(_reference_engine, model_dir)
    schedule = make_schedule(seed, settings.schedule, engine.tokenizer.vocab_size)
    bodies = {spec.index: _body(schedule, spec, model_dir.name, engine) for spec in schedule.requests}
    pairs = {(schedule.prompt(spec.prompt_id), bodies[spec.index].max_tokens)
             for spec in schedule.requests if spec.is_greedy and spec.api != "worker"
             and (spec.kind == "normal" or _is_valid_and_comparable(spec.kind))}
    cluster = FaultCluster(FaultClusterConfig(
        model_dir=model_dir, tenants=TENANT_KEYS, num_prefill=settings.schedule.num_prefill,
        num_decode=settings.schedule.num_decode, num_blocks=settings.num_blocks,
        kv_timeout_s=settings.kv_timeout_s, lease_seconds=settings.lease_seconds), run_dir)
    expected_task = asyncio.create_task(asyncio.to_thread(expected_outputs, engine, pairs))
    seconds: dict[str, float] = {}
    try:
        await asyncio.to_thread(cluster.start)
        expected = await expected_task
        seconds["startup"] = time.monotonic() - began
        record, t0, dropped = await _play(cluster, schedule, bodies, expected, settings, seconds,
                                          engine.tokenizer.vocab_size)
    finally:
        await asyncio.to_thread(cluster.stop)
    seconds["total"] = time.monotonic() - began
    return SuiteReport(seed, schedule, check_run(record), record.outcomes, record.windows, t0, seconds,
                       run_dir, dropped)


async def _play(cluster: FaultCluster, schedule: Schedule, bodies: dict, expected: dict,
                settings: SuiteSettings, seconds: dict[str, float], vocab_size: int):
    metadata = cluster.worker_metadata()
    names = cluster.worker_names
    baselines = dict(zip(names, await asyncio.gather(
        *(used_blocks(cluster.address(n), n.startswith("decode"), metadata) for n in names))))
    windows: list[FaultWindow] = []
    canary = CanaryTally()
    outcomes: dict[int, Outcome] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session, \
            grpc.aio.insecure_channel(cluster.grpc_address, options=GRPC_OPTIONS) as channel:
        t0 = now()
        started = time.monotonic()
        sends = [_send(spec, bodies[spec.index], t0, settings.margin_s, channel, session, cluster,
                       outcomes) for spec in schedule.requests]
        faults = [play_fault(cluster, fault, t0, windows, canary, session) for fault in schedule.faults]
        await asyncio.gather(*sends, *faults)
        seconds["requests_and_faults"] = time.monotonic() - started
        started = time.monotonic()
        restarted = sorted({f.target for f in schedule.faults if f.kind == KILL})
        rejoin_problems = await check_rejoin(cluster, restarted, channel, session,
                                             TENANT_KEYS[GOOD_TENANTS[0]],
                                             cluster.config.model_dir.name, vocab_size, schedule.seed,
                                             settings.margin_s)
        seconds["rejoin"] = time.monotonic() - started
        started = time.monotonic()
        finals = await asyncio.gather(*(wait_for_blocks(cluster.address(n), n.startswith("decode"),
                                                        baselines[n], settings.blocks_wait_s, metadata)
                                        for n in names))
        seconds["blocks_wait"] = time.monotonic() - started
        canary_total = await _canary_total(cluster, canary, session)
        router_samples = await scrape(session, cluster.router_metrics_url)
    labels = {s[1]["model"] for s in router_samples if s[0].startswith("tandem_") and "model" in s[1]}
    dropped = {f"{s[1].get('component')}/{s[1].get('kind')}": s[2] for s in router_samples
               if s[0] == "tandem_dropped_errors_total"}
    record = RunRecord(schedule=schedule, outcomes=outcomes, bodies=bodies, windows=windows,
                       expected=expected, blocks={n: (baselines[n], f) for n, f in zip(names, finals)},
                       canary_total=canary_total, model_label_values=labels,
                       served_model=cluster.config.model_dir.name, margin_s=settings.margin_s,
                       workers_per_role={"prefill": settings.schedule.num_prefill,
                                         "decode": settings.schedule.num_decode},
                       max_worker_losses=MAX_WORKER_LOSSES, canary_lost=canary.is_lost,
                       rejoin_problems=rejoin_problems)
    return record, t0, dropped


async def _send(spec: RequestSpec, body, t0: float, margin_s: float, channel, session, cluster,
                outcomes: dict[int, Outcome]) -> None:
    await asyncio.sleep(max(0.0, t0 + spec.start_s - now()))
    outcome = outcomes[spec.index] = Outcome(spec.index, started_at=now())
    limit_s = spec.deadline_s + margin_s
    try:
        if spec.api == "grpc":
            await send_grpc(channel, body, outcome, limit_s, spec.cancel_after_tokens, spec.cancel_after_s)
        elif spec.api == "http":
            await send_http(session, cluster.http_url, body, outcome, limit_s, spec.cancel_after_tokens,
                            spec.cancel_after_s)
        else:
            # A fresh channel: one kept from before a restart may still be backing off.
            async with grpc.aio.insecure_channel(cluster.address(body.target)) as worker_channel:
                await send_worker(worker_channel, body, outcome)
    except Exception as exc:  # the harness must record every request, whatever broke
        log.exception("request %d failed in the client", spec.index)
        outcome.status, outcome.message = "HARNESS_ERROR", repr(exc)
    outcome.ended_at = now()


async def _canary_total(cluster: FaultCluster, canary: CanaryTally, session) -> float:
    total = canary.before_kills
    for name in cluster.worker_names:
        samples = await scrape(session, cluster.metrics_url(name))
        total += metric_total(samples, CANARY_METRIC)
        canary.is_lost |= not has_metric(samples, CANARY_METRIC)
    return total


def _body(schedule: Schedule, spec: RequestSpec, model_name: str, engine):
    prompt = schedule.prompt(spec.prompt_id)
    variant_seed = schedule.seed * 100_003 + spec.index
    if spec.api == "worker":
        return worker_call(spec.variant, spec.target, variant_seed, prompt.token_ids)
    body = RequestBody(api_key=TENANT_KEYS[spec.tenant], model=model_name, prompt=prompt,
                       max_tokens=spec.max_tokens, deadline_s=spec.deadline_s,
                       num_samples=spec.num_samples, temperature=spec.temperature, seed=spec.seed,
                       request_id=spec.request_id)
    if spec.kind == "normal":
        return body
    return hostile_body(spec.kind, spec.variant, body, variant_seed, engine.tokenizer.vocab_size,
                        engine.max_model_len)


def _is_valid_and_comparable(kind_name: str) -> bool:
    kind = KINDS_BY_NAME[kind_name]
    return kind.expected is None and kind.compares_output


def _reference_engine(model_dir: Path):
    import torch

    from tandem.engine.engine_config import EngineConfig
    from tandem.engine.llm_engine import LLMEngine

    torch.set_num_threads(1)
    return LLMEngine(model_dir, EngineConfig(num_blocks=1024, block_size=16))


def _health_lines(router_log: Path) -> list[str]:
    """The router's log lines about workers joining, failing and coming back."""
    try:
        text = router_log.read_text(errors="replace")
    except FileNotFoundError:
        return ["(no router log)"]
    return [line[:300] for line in text.splitlines()
            if "router.worker_pool" in line and any(w in line for w in ("healthy", "joined", "left"))]
