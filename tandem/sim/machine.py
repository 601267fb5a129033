"""One simulated machine: continuous batching at iteration granularity, no per-token work.

Each iteration prefills whole prompts from a FIFO queue (up to `max_batch_tokens`, at least one)
and/or advances every running sequence by one token. A sequence that joins at decode iteration k
with r tokens to go finishes when the machine's iteration counter reaches k + r, so finishing is a
heap pop rather than per-token bookkeeping. KV memory is reserved for prompt + output when a
sequence is admitted (no preemption), so admission waits when the cache is full.
"""

from __future__ import annotations

import collections
import heapq

from tandem.policy.worker_choice import WorkerSnapshot
from tandem.sim.hardware import GpuType
from tandem.sim.perf_model import PerfModel

KV_BLOCK_TOKENS = 16  # block size reported in worker snapshots, as the engine's paged cache uses


class Requests:
    """Columns of per-request state shared by the engine and machines (Python lists: fast scalars)."""

    def __init__(self, prompt: list[int], output: list[int]) -> None:
        n = len(prompt)
        self.prompt = prompt
        self.output = output
        self.uncached = list(prompt)          # prompt tokens the prefilling machine must compute
        self.decode_machine = [-1] * n
        self.prefill_machine = [-1] * n
        self.first_token_s = [0.0] * n
        self.finish_s = [0.0] * n


class Machine:
    """A machine's queues, running batch, KV reservation and accounting."""

    __slots__ = ("machine_id", "index", "pool", "gpu", "perf", "num_gpus", "kv_capacity",
                 "max_batch_size", "max_batch_tokens", "prompt_queue", "queued_prompt_tokens",
                 "joins", "num_expected", "batch", "batch_size", "context_tokens", "kv_reserved",
                 "num_iterations", "is_busy", "iter_prefill", "iter_tokens", "iter_batch",
                 "iter_batch_before", "iter_joined", "iter_started_s",
                 "is_accepting", "is_ready", "started_s", "ready_s", "retired_s", "busy_s",
                 "energy_j", "prefilled_tokens", "link_free_s", "prefix_cache", "cache_blocks",
                 "snapshot_cache")

    def __init__(self, machine_id: str, index: int, pool: str, gpu: GpuType, perf: PerfModel,
                 num_gpus: int, kv_capacity: int, max_batch_size: int, max_batch_tokens: int,
                 started_s: float, ready_s: float, cache_blocks: int) -> None:
        self.machine_id, self.index, self.pool = machine_id, index, pool
        self.gpu, self.perf, self.num_gpus = gpu, perf, num_gpus
        self.kv_capacity, self.max_batch_size, self.max_batch_tokens = (
            kv_capacity, max_batch_size, max_batch_tokens)
        self.prompt_queue: collections.deque[int] = collections.deque()
        self.queued_prompt_tokens = 0      # queued or in progress
        self.joins: collections.deque[int] = collections.deque()  # KV here, waiting for a slot
        self.num_expected = 0              # routed here for decode, prefill not done yet
        self.batch: list[tuple[int, int]] = []  # heap of (finish iteration, request id)
        self.batch_size = self.context_tokens = self.kv_reserved = self.num_iterations = 0
        self.is_busy = False
        self.iter_prefill: list[int] = []
        self.iter_joined: list[int] = []   # sequences whose first decode token this iteration makes
        self.iter_tokens = self.iter_batch = self.iter_batch_before = 0
        self.iter_started_s = 0.0
        self.is_accepting, self.is_ready = True, ready_s <= started_s
        self.started_s, self.ready_s, self.retired_s = started_s, ready_s, None
        self.busy_s = self.energy_j = 0.0
        self.prefilled_tokens = 0
        self.link_free_s = 0.0
        self.prefix_cache: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.cache_blocks = cache_blocks
        self.snapshot_cache: WorkerSnapshot | None = None

    def snapshot(self) -> WorkerSnapshot:
        """The load the router sees (rebuilt only after the machine changed)."""
        if self.snapshot_cache is None:
            used = min(self.kv_reserved, self.kv_capacity) // KV_BLOCK_TOKENS
            self.snapshot_cache = WorkerSnapshot(
                self.machine_id, self.batch_size,
                len(self.prompt_queue) + len(self.joins) + self.num_expected,
                self.queued_prompt_tokens, self.kv_capacity // KV_BLOCK_TOKENS, used,
                self.is_accepting and self.is_ready)
        return self.snapshot_cache

    def has_work(self) -> bool:
        """Whether anything is queued, running, or on its way here."""
        return bool(self.prompt_queue or self.joins or self.batch_size or self.num_expected
                    or self.is_busy)

    def cached_prefix_blocks(self, block_hashes: list[int]) -> int:
        """Leading blocks of a prompt found in this machine's prefix cache."""
        cache, num = self.prefix_cache, 0
        for block_hash in block_hashes:
            if block_hash not in cache:
                break
            num += 1
        return num

    def remember_prefix(self, block_hashes: list[int]) -> None:
        """Keeps a prompt's blocks in the prefix cache, least recently used out."""
        cache = self.prefix_cache
        for block_hash in block_hashes:
            cache[block_hash] = None
            cache.move_to_end(block_hash)
        while len(cache) > self.cache_blocks:
            cache.popitem(last=False)

    def enqueue_prompt(self, rid: int, num_tokens: int) -> None:
        """Queues a prompt to prefill here."""
        self.prompt_queue.append(rid)
        self.queued_prompt_tokens += num_tokens
        self.snapshot_cache = None

    def start_iteration(self, now: float, reqs: Requests, idle_fraction: float) -> float | None:
        """Forms the next batch; returns its duration, or None if there is nothing to run."""
        prompt, output = reqs.prompt, reqs.output
        joins, joined = self.joins, self.iter_joined
        joined.clear()
        self.iter_batch_before = self.batch_size
        self.iter_started_s = now
        while joins and self.batch_size < self.max_batch_size:
            rid = joins[0]
            need = prompt[rid] + output[rid]
            if self.kv_reserved + need > self.kv_capacity and self.batch_size:
                break
            joins.popleft()
            joined.append(rid)
            self.kv_reserved += need
            self._add_to_batch(rid, prompt[rid], output[rid] - 1)
        taken, tokens, queue, uncached = self.iter_prefill, 0, self.prompt_queue, reqs.uncached
        taken.clear()
        while queue:
            rid = queue[0]
            if taken and tokens + uncached[rid] > self.max_batch_tokens:
                break
            if reqs.decode_machine[rid] == self.index:
                need = prompt[rid] + output[rid]
                if self.batch_size + len(taken) >= self.max_batch_size or (
                        self.kv_reserved + need > self.kv_capacity and (self.batch_size or taken)):
                    break
                self.kv_reserved += need
            queue.popleft()
            taken.append(rid)
            tokens += uncached[rid]
        self.iter_tokens, self.iter_batch = tokens, self.batch_size
        perf = self.perf
        if taken and self.batch_size:
            duration = perf.mixed_time(tokens, self.batch_size, self.context_tokens)
        elif taken:
            duration = perf.prefill_time(tokens)
        elif self.batch_size:
            duration = perf.decode_time(self.batch_size, self.context_tokens)
        else:
            return None
        fraction = perf.prefill_power_fraction(tokens) if taken else perf.decode_power
        # Energy above idle here; the idle floor is charged over the machine's whole life.
        watts = self.gpu.tdp_watts * self.num_gpus
        self.energy_j += duration * watts * max(0.0, fraction - idle_fraction)
        self.busy_s += duration
        self.is_busy = True
        if taken or self.batch_size != self.iter_batch_before:
            self.snapshot_cache = None
        return duration

    def finish_iteration(self, reqs: Requests) -> tuple[list[int], list[int]]:
        """Ends the running iteration: returns (request ids prefilled, request ids finished)."""
        finished: list[int] = []
        if self.iter_batch:
            self.num_iterations += 1
            self.context_tokens += self.iter_batch
            batch, now_iter = self.batch, self.num_iterations
            prompt, output = reqs.prompt, reqs.output
            while batch and batch[0][0] <= now_iter:
                rid = heapq.heappop(batch)[1]
                finished.append(rid)
                self.batch_size -= 1
                self.context_tokens -= prompt[rid] + output[rid]
                self.kv_reserved -= prompt[rid] + output[rid]
        prefilled = list(self.iter_prefill)
        self.queued_prompt_tokens -= self.iter_tokens
        self.prefilled_tokens += self.iter_tokens
        for rid in prefilled:
            if reqs.decode_machine[rid] == self.index and reqs.output[rid] > 1:
                self._add_to_batch(rid, reqs.prompt[rid], reqs.output[rid] - 1)
            elif reqs.decode_machine[rid] == self.index:
                self.kv_reserved -= reqs.prompt[rid] + reqs.output[rid]
        self.is_busy = False
        if finished or prefilled:
            self.snapshot_cache = None
        return prefilled, finished

    def _add_to_batch(self, rid: int, num_prompt: int, num_remaining: int) -> None:
        # Its context ends at prompt + output tokens after num_remaining more iterations.
        heapq.heappush(self.batch, (self.num_iterations + num_remaining, rid))
        self.batch_size += 1
        self.context_tokens += num_prompt + 1
