"""The discrete-event loop: arrivals, routing, iterations, KV transfers, scaling ticks.

Events are (time, sequence, kind, machine index, request id) tuples on one heap; arrivals are read
in order from the trace arrays and merged with the heap, so the heap holds only in-flight events
(one iteration end per busy machine, KV transfers, machine start-ups, scaling ticks). Routing runs
`tandem.policy.worker_choice` unchanged; scaling runs `tandem.policy.autoscaling` unchanged, on
what the router and the workers would expose (`tandem.sim.telemetry`).
"""

from __future__ import annotations

import collections
import heapq
from dataclasses import dataclass, field

from tandem.policy import worker_choice
from tandem.sim.config import AutoscaleMode, SimConfig
from tandem.sim.machine import Machine, Requests
from tandem.sim.pools import Pool, build_pools
from tandem.sim.scaling import ScalingDriver
from tandem.sim.telemetry import RouterTelemetry
from tandem.sim.traces import Trace

_ITERATION, _KV_ARRIVAL, _READY, _TICK = 0, 1, 2, 3


@dataclass(slots=True)
class RoutingStats:
    """How the router placed requests."""

    num_disaggregated: int = 0
    num_local_prefill: int = 0
    num_locality_choices: int = 0
    num_cached_prompt_tokens: int = 0


@dataclass(slots=True)
class SimResult:
    """Raw outcome of a run: per-request times, machines, pools and what the router and scaler did."""

    config: SimConfig
    trace: Trace
    requests: Requests
    machines: list[Machine]
    pools: list[Pool]
    routing: RoutingStats
    end_s: float
    scaling_actions: list[dict] = field(default_factory=list)
    replica_timeline: list[dict] = field(default_factory=list)


class Simulator:
    """Runs one trace through one cluster configuration."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.machines: list[Machine] = []
        self.pools = build_pools(config, self)
        self.prefill_pool = next((p for p in self.pools if p.name == "prefill"), None)
        self.decode_pool = next(p for p in self.pools if p.name in ("decode", "colocated"))
        self._pool_by_name = {p.name: p for p in self.pools}
        self.prefix_index = worker_choice.PrefixIndex(max_blocks_per_worker=100_000)
        self.routing = RoutingStats()
        # What the router measures; only autoscalers read it, so a static run skips the cost.
        self.router = (RouterTelemetry(config.model)
                       if config.autoscale is not AutoscaleMode.STATIC else None)
        self.scaling = ScalingDriver(config, self)
        self._heap: list[tuple] = []
        self._seq = 0
        self.backlog: collections.deque[int] = collections.deque()

    def run(self, trace: Trace) -> SimResult:
        """Simulates every request of `trace` to completion."""
        reqs = Requests(trace.prompt_tokens.tolist(), trace.output_tokens.tolist())
        self.reqs, self.trace = reqs, trace
        # Without prefix caching the block hashes mean nothing to the router or the machines.
        self.hashes = trace.block_hashes if self.config.prefix_caching else None
        self.block_size = trace.block_size
        arrivals = self.arrivals = trace.arrival_s.tolist()
        heap, machines = self._heap, self.machines
        self._push(0.0, _TICK, -1, -1)
        i, n, now = 0, len(arrivals), 0.0
        while True:
            if i < n and (not heap or arrivals[i] <= heap[0][0]):
                now = arrivals[i]
                self._route(i, now)
                i += 1
                continue
            if not heap:
                break
            now, _, kind, index, rid = heapq.heappop(heap)
            if kind == _ITERATION:
                self._iteration_end(machines[index], now)
            elif kind == _KV_ARRIVAL:
                self._kv_arrival(machines[index], rid, now)
            elif kind == _READY:
                self._machine_ready(machines[index], now)
            elif i < n or any(m.has_work() for m in machines) or self.backlog:
                self.scaling.tick(now)
                self._push(now + self.config.autoscale_interval_s, _TICK, -1, -1)
        end = max(reqs.finish_s) if n else 0.0
        for machine in machines:
            if machine.retired_s is None:
                machine.retired_s = max(end, machine.started_s)
        return SimResult(self.config, trace, reqs, machines, self.pools, self.routing, end,
                         self.scaling.actions, self.scaling.timeline)

    def add_machine(self, pool: Pool, now: float, delay_s: float) -> Machine:
        """Starts a machine in `pool`; it serves after `delay_s` (0: at once)."""
        machine = pool.new_machine(len(self.machines), now, now + delay_s)
        self.machines.append(machine)
        if delay_s > 0:
            self._push(now + delay_s, _READY, machine.index, -1)
        return machine

    def retire_if_idle(self, machine: Machine, now: float) -> None:
        """Removes a draining machine once nothing is left on it."""
        if not machine.is_accepting and machine.retired_s is None and not machine.has_work():
            machine.retired_s = now
            self.prefix_index.forget(machine.machine_id)
            pool = self.pool_of(machine)
            pool.machines.remove(machine)
            pool.refresh()

    def pool_of(self, machine: Machine) -> Pool:
        """The pool a machine belongs to."""
        return self._pool_by_name[machine.pool]

    def _push(self, when: float, kind: int, index: int, rid: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, index, rid))

    def _start(self, machine: Machine, now: float) -> None:
        if machine.is_busy:
            return
        duration = machine.start_iteration(now, self.reqs, self.config.idle_power_fraction)
        if duration is not None:
            self._push(now + duration, _ITERATION, machine.index, -1)

    def _route(self, rid: int, now: float) -> None:
        decode_snaps = [m.snapshot_cache or m.snapshot() for m in self.decode_pool.routable]
        if not decode_snaps or (self.prefill_pool is not None and not self.prefill_pool.routable):
            self.backlog.append(rid)
            return
        reqs, cfg = self.reqs, self.config.worker_choice
        hashes = self.hashes[rid] if self.hashes is not None else []
        choice = worker_choice.choose_decode_worker(decode_snaps, hashes, self.prefix_index, cfg)
        decode = self.decode_pool.by_id[choice.worker_id]
        reqs.decode_machine[rid] = decode.index
        if choice.reason.startswith("prefix locality"):
            self.routing.num_locality_choices += 1
        target = decode
        if self.prefill_pool is not None:
            target = self._place_prefill(rid, decode, choice.num_cached_blocks)
        cached = target.cached_prefix_blocks(hashes) if hashes else 0
        num_uncached = max(1, reqs.prompt[rid] - cached * self.block_size)
        self.routing.num_cached_prompt_tokens += reqs.prompt[rid] - num_uncached
        reqs.uncached[rid] = num_uncached
        reqs.prefill_machine[rid] = target.index
        target.enqueue_prompt(rid, num_uncached)
        if hashes:
            self.prefix_index.record(decode.machine_id, hashes)
        self._start(target, now)

    def _place_prefill(self, rid: int, decode: Machine, num_cached_blocks: int) -> Machine:
        # Conditional disaggregation: the machine that prefills (the decode machine itself for
        # short prompts, or for any prompt when the prefill pool is saturated).
        reqs, cfg = self.reqs, self.config.worker_choice
        num_uncached = max(1, reqs.prompt[rid] - num_cached_blocks * self.block_size)
        prefill_snaps = [m.snapshot_cache or m.snapshot() for m in self.prefill_pool.routable]
        is_split, _ = worker_choice.should_disaggregate(num_uncached, prefill_snaps, cfg)
        if not is_split:
            self.routing.num_local_prefill += 1
            return decode
        picked = worker_choice.choose_prefill_worker(prefill_snaps, reqs.prompt[rid], cfg)
        decode.num_expected += 1
        decode.snapshot_cache = None
        self.routing.num_disaggregated += 1
        return self.prefill_pool.by_id[picked.worker_id]

    def _iteration_end(self, machine: Machine, now: float) -> None:
        reqs, router = self.reqs, self.router
        if machine.iter_batch and router is not None:
            self._observe_token_gaps(machine, now)
        prefilled, finished = machine.finish_iteration(reqs)
        for rid in finished:
            reqs.finish_s[rid] = now
        for rid in prefilled:
            reqs.first_token_s[rid] = now
            if router is not None:
                router.ttft.observe(now - self.arrivals[rid])
            if self.hashes is not None:
                machine.remember_prefix(self.hashes[rid])
            decode = self.machines[reqs.decode_machine[rid]]
            if reqs.output[rid] == 1:
                reqs.finish_s[rid] = now
                if decode is not machine:
                    decode.num_expected -= 1
                    decode.snapshot_cache = None
                    self.retire_if_idle(decode, now)
            elif decode is not machine:
                self._ship_kv(machine, decode, rid, now)
        self._start(machine, now)
        self.retire_if_idle(machine, now)

    def _observe_token_gaps(self, machine: Machine, now: float) -> None:
        # The router's inter-token histogram: every sequence in the batch got a token now, after
        # this iteration; one whose KV just arrived waited since its first token.
        itl, joined = self.router.itl, machine.iter_joined
        itl.observe(now - machine.iter_started_s, machine.iter_batch - len(joined))
        first_token_s = self.reqs.first_token_s
        for rid in joined:
            itl.observe(now - first_token_s[rid])

    def _ship_kv(self, source: Machine, decode: Machine, rid: int, now: float) -> None:
        # The link of the prefill machine carries one transfer at a time; the share kv_overlap
        # was already sent layer by layer while the prompt computed.
        cfg = self.config
        num_bytes = self.reqs.prompt[rid] * self.pools[0].model.kv_bytes_per_token
        seconds = cfg.link_latency_s + (1 - cfg.kv_overlap) * num_bytes / (cfg.link_bandwidth_gb_s * 1e9)
        start = max(now, source.link_free_s)
        source.link_free_s = start + seconds
        self._push(start + seconds, _KV_ARRIVAL, decode.index, rid)

    def _kv_arrival(self, machine: Machine, rid: int, now: float) -> None:
        machine.num_expected -= 1
        machine.joins.append(rid)
        machine.snapshot_cache = None
        if self.hashes is not None:
            machine.remember_prefix(self.hashes[rid])
        self._start(machine, now)

    def _machine_ready(self, machine: Machine, now: float) -> None:
        machine.is_ready = True
        machine.snapshot_cache = None
        self.pool_of(machine).refresh()
        backlog, self.backlog = self.backlog, collections.deque()
        for rid in backlog:
            self._route(rid, now)
