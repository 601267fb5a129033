"""Worker choice for each request: which decode worker, which prefill worker, and whether to split.

Pure functions over snapshots of worker load; no I/O. The router calls them per request and the
cluster simulator runs the very same functions.

Decode choice scores load (running + waiting sequences, plus KV usage weighted as sequences) and
prefix locality (how many leading prompt blocks a worker probably still holds). Locality wins only
while the worker's load stays within `locality_load_factor` x the least load (+ `locality_load_slack`),
so a popular prefix cannot pile every request onto one hot worker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tandem.engine import block_hash
from tandem.policy.prefix_index import PrefixIndex

__all__ = [
    "Choice", "NoWorkerAvailable", "PrefixIndex", "WorkerChoiceConfig", "WorkerSnapshot",
    "chained_block_hashes", "choose_decode_worker", "choose_prefill_worker", "should_disaggregate",
]


class NoWorkerAvailable(RuntimeError):
    """No worker of the needed phase is accepting requests."""


@dataclass(slots=True, frozen=True)
class WorkerSnapshot:
    """The load of one worker as last reported."""

    worker_id: str
    num_running: int
    num_waiting: int
    num_queued_prompt_tokens: int
    num_kv_blocks_total: int
    num_kv_blocks_used: int
    is_accepting: bool = True

    def __post_init__(self) -> None:
        if min(self.num_running, self.num_waiting, self.num_queued_prompt_tokens,
               self.num_kv_blocks_total, self.num_kv_blocks_used) < 0:
            negative = [name for name in ("num_running", "num_waiting", "num_queued_prompt_tokens",
                                          "num_kv_blocks_total", "num_kv_blocks_used")
                        if getattr(self, name) < 0]
            raise ValueError(f"WorkerSnapshot {self.worker_id!r}: {', '.join(negative)} must be >= 0")
        if self.num_kv_blocks_used > self.num_kv_blocks_total:
            raise ValueError(f"WorkerSnapshot {self.worker_id!r}: {self.num_kv_blocks_used} KV blocks "
                             f"used of only {self.num_kv_blocks_total}")

    @property
    def kv_usage(self) -> float:
        """Fraction of the worker's KV blocks in use (1.0 when it has none)."""
        if self.num_kv_blocks_total == 0:
            return 1.0
        return self.num_kv_blocks_used / self.num_kv_blocks_total


@dataclass(slots=True)
class WorkerChoiceConfig:
    """Weights and thresholds of worker choice and conditional disaggregation."""

    kv_usage_weight: float = 16.0          # a full KV cache weighs as much as this many sequences
    locality_load_factor: float = 1.5      # locality wins only within this factor of the least load
    locality_load_slack: float = 4.0       # ... plus this many sequences (lets idle pools use locality)
    min_cached_blocks: int = 1             # fewer leading blocks cached than this is no locality
    max_kv_usage_for_locality: float = 0.95  # a worker this full gets no request for locality
    min_disaggregate_prompt_tokens: int = 512  # shorter uncached prompts prefill on the decode worker
    prefill_saturation_tokens: float = 65_536.0  # queued tokens on the least-loaded prefill worker
                                                 # beyond which the prefill pool counts as saturated

    def __post_init__(self) -> None:
        if self.kv_usage_weight < 0 or self.locality_load_slack < 0:
            raise ValueError("kv_usage_weight and locality_load_slack must be >= 0")
        if self.locality_load_factor < 1.0:
            raise ValueError(f"locality_load_factor must be >= 1, got {self.locality_load_factor}")
        if self.min_cached_blocks < 1:
            raise ValueError(f"min_cached_blocks must be >= 1, got {self.min_cached_blocks}")
        if not 0.0 < self.max_kv_usage_for_locality <= 1.0:
            raise ValueError("max_kv_usage_for_locality must be in (0, 1]")
        if self.min_disaggregate_prompt_tokens < 0:
            raise ValueError("min_disaggregate_prompt_tokens must be >= 0")
        if not self.prefill_saturation_tokens > 0:
            raise ValueError("prefill_saturation_tokens must be > 0")


@dataclass(slots=True, frozen=True)
class Choice:
    """The chosen worker, why, and how many leading prompt blocks it probably has cached."""

    worker_id: str
    reason: str
    num_cached_blocks: int = 0


def decode_load(worker: WorkerSnapshot, config: WorkerChoiceConfig) -> float:
    """A decode worker's load in sequence-equivalents: running + waiting + weighted KV usage."""
    return worker.num_running + worker.num_waiting + config.kv_usage_weight * worker.kv_usage


def choose_decode_worker(workers: list[WorkerSnapshot], prompt_block_hashes: list[int],
                         prefix_index: PrefixIndex, config: WorkerChoiceConfig) -> Choice:
    """Picks the decode worker for a request: prefix locality within a load bound, else least load."""
    # One pass with the load inlined: the router and the simulator call this for every request.
    weight = config.kv_usage_weight
    candidates, loads = [], []
    for w in workers:
        if w.is_accepting:
            total = w.num_kv_blocks_total
            candidates.append(w)
            loads.append(w.num_running + w.num_waiting
                         + (weight * w.num_kv_blocks_used / total if total else weight))
    if not candidates:
        raise NoWorkerAvailable(f"no decode worker is accepting requests (of {len(workers)})")
    least_load = min(loads)
    least = _spread([w for w, load in zip(candidates, loads) if load == least_load],
                    prompt_block_hashes[0] if prompt_block_hashes else 0)
    hits = prefix_index.match(prompt_block_hashes) if prompt_block_hashes else {}
    if not hits:
        return Choice(least.worker_id, f"least loaded: load {least_load:.1f} over "
                      f"{len(candidates)} workers", 0)
    bound = config.locality_load_factor * least_load + config.locality_load_slack
    local = [(hits[w.worker_id], -load, w) for w, load in zip(candidates, loads)
             if hits.get(w.worker_id, 0) >= config.min_cached_blocks and load <= bound
             and w.kv_usage <= config.max_kv_usage_for_locality]
    if local:
        num_hit, neg_load, best = max(local, key=lambda item: (item[0], item[1]))
        return Choice(best.worker_id, f"prefix locality: {num_hit} of {len(prompt_block_hashes)} "
                      f"blocks cached, load {-neg_load:.1f} within bound {bound:.1f} "
                      f"(least {least_load:.1f})", num_hit)
    return Choice(least.worker_id, f"least loaded: load {least_load:.1f} over {len(candidates)} "
                  f"workers; cached prefixes only on workers over the load bound {bound:.1f}",
                  hits.get(least.worker_id, 0))


def choose_prefill_worker(workers: list[WorkerSnapshot], num_prompt_tokens: int,
                          config: WorkerChoiceConfig) -> Choice:
    """Picks the prefill worker with the fewest queued prompt tokens."""
    if num_prompt_tokens < 0:
        raise ValueError(f"num_prompt_tokens must be >= 0, got {num_prompt_tokens}")
    candidates = [w for w in workers if w.is_accepting]
    if not candidates:
        raise NoWorkerAvailable(f"no prefill worker is accepting requests (of {len(workers)})")
    key = {w.worker_id: (w.num_queued_prompt_tokens, w.num_running + w.num_waiting) for w in candidates}
    least_key = min(key.values())
    best = _spread([w for w in candidates if key[w.worker_id] == least_key], num_prompt_tokens)
    return Choice(best.worker_id, f"fewest queued prompt tokens: {best.num_queued_prompt_tokens} "
                  f"(+{num_prompt_tokens}) over {len(candidates)} workers")


def should_disaggregate(num_uncached_prompt_tokens: int, prefill_workers: list[WorkerSnapshot],
                        config: WorkerChoiceConfig) -> tuple[bool, str]:
    """Whether to prefill on a prefill worker (True) or on the decode worker itself (False)."""
    if num_uncached_prompt_tokens < 0:
        raise ValueError(f"num_uncached_prompt_tokens must be >= 0, got {num_uncached_prompt_tokens}")
    if num_uncached_prompt_tokens < config.min_disaggregate_prompt_tokens:
        return False, (f"short uncached prompt ({num_uncached_prompt_tokens} < "
                       f"{config.min_disaggregate_prompt_tokens} tokens): prefill on the decode worker")
    accepting = [w for w in prefill_workers if w.is_accepting]
    if not accepting:
        return False, "no prefill worker is accepting: prefill on the decode worker"
    least_queued = min(w.num_queued_prompt_tokens for w in accepting)
    if least_queued >= config.prefill_saturation_tokens:
        return False, (f"prefill pool saturated ({least_queued} queued tokens on its least-loaded "
                       f"worker): prefill on the decode worker")
    return True, (f"disaggregate: {num_uncached_prompt_tokens} uncached prompt tokens, prefill pool "
                  f"has room ({least_queued} queued tokens on its least-loaded worker)")


def chained_block_hashes(token_ids: list[int], block_size: int) -> list[int]:
    """Hashes of each full block of `token_ids`, each chained on its parent (stable across processes):
    the engine's prefix-cache hashes, cut to 63 bits."""
    return [int.from_bytes(digest[:8], "little") >> 1  # fits a signed 64-bit field
            for digest in block_hash.chained_block_hashes(token_ids, block_size)]


def _spread(tied: list[WorkerSnapshot], salt: int) -> WorkerSnapshot:
    # Equal loads: pick by a per-request hash so that ties spread over workers, deterministically.
    if len(tied) == 1:
        return tied[0]
    return min(tied, key=lambda w: hashlib.blake2b(f"{w.worker_id}:{salt}".encode(),
                                                   digest_size=4).digest())
