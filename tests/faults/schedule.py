"""A fault schedule drawn from a seed: prompts, requests (with client cancels) and worker faults.

The schedule fixes what happens and when (offsets from the start of the run); the timing of the
real processes still varies from run to run. `describe()` prints it one event per line, so that a
failing seed can be read and replayed (`benchmarks/fault_suite.py --seeds N`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace

from tests.faults.fault_plan import ROLES, FaultSpec, plan_faults
from tests.faults.hostile import HOSTILE_KINDS, KINDS_BY_NAME
from tests.faults.request_body import PromptSpec

GOOD_TENANTS = ("alpha", "beta", "gamma")
HOSTILE_TENANT = "mallory"


@dataclass(slots=True, frozen=True)
class RequestSpec:
    """One client request: who sends it, how, when, what it asks for, and whether it is cancelled."""

    index: int
    start_s: float
    tenant: str
    api: str  # "grpc", "http" or "worker" (a direct, unauthenticated call to a worker)
    kind: str  # "normal" or a name in tests.faults.hostile.HOSTILE_KINDS
    prompt_id: int
    max_tokens: int
    deadline_s: float
    num_samples: int = 1
    temperature: float = 0.0
    seed: int | None = None
    request_id: str = ""
    cancel_after_tokens: int | None = None
    cancel_after_s: float | None = None
    variant: int = 0  # which variant of a hostile kind (sizes and values)
    target: str = ""  # worker name, for api "worker"

    @property
    def is_greedy(self) -> bool:
        """Greedy single-sample requests must produce exactly what the engine alone produces."""
        return self.temperature == 0.0 and self.num_samples == 1

    @property
    def is_cancelled_by_client(self) -> bool:
        """Whether the client closes this request's stream on purpose."""
        return self.cancel_after_tokens is not None or self.cancel_after_s is not None


@dataclass(slots=True)
class ScheduleConfig:
    """How much of everything a schedule holds."""

    num_requests: int = 240
    duration_s: float = 30.0
    num_prefill: int = 2
    num_decode: int = 2
    hostile_fraction: float = 0.15
    cancel_fraction: float = 0.08
    http_fraction: float = 0.4
    sampled_fraction: float = 0.1  # seeded n=2 sampling instead of greedy
    num_duplicate_id_pairs: int = 3
    num_kills: int = 2
    num_stalls: int = 2
    kill_down_s: tuple[float, float] = (0.5, 2.0)
    stall_s: tuple[float, float] = (1.5, 7.0)
    deadline_s: float = 20.0
    # False: a role's faults come one after another, so each pool keeps a worker (retries and
    # migration must save every request). True: faults at random times, whole pools may go down.
    allow_role_outage: bool = False
    # With allow_role_outage, faults on one worker start at least this far apart.
    same_target_gap_s: float = 15.0

    def __post_init__(self) -> None:
        if self.num_requests < 1 or self.duration_s <= 0:
            raise ValueError(f"ScheduleConfig: need requests and a duration, got "
                             f"{self.num_requests} requests over {self.duration_s}s")
        for name in ("hostile_fraction", "cancel_fraction", "http_fraction", "sampled_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ScheduleConfig: {name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(slots=True)
class Schedule:
    """Everything a seed decides."""

    seed: int
    config: ScheduleConfig
    prompts: list[PromptSpec]
    requests: list[RequestSpec]
    faults: list[FaultSpec]

    def prompt(self, prompt_id: int) -> PromptSpec:
        """The prompt with this id."""
        return self.prompts[prompt_id]

    def describe(self) -> str:
        """One line per fault and per request, in time order."""
        lines = [f"seed {self.seed}: {len(self.requests)} requests, {len(self.faults)} worker faults"]
        events = [(f.start_s, f"fault {f.kind} {f.target} for {f.duration_s:.1f}s") for f in self.faults]
        usual = {"deadline_s": self.config.deadline_s, "num_samples": 1, "temperature": 0.0,
                 "seed": None, "request_id": "", "cancel_after_tokens": None, "cancel_after_s": None,
                 "variant": 0, "target": ""}
        for r in self.requests:
            extras = " ".join(f"{k}={v!r}" for k, v in asdict(r).items() if k in usual and v != usual[k])
            events.append((r.start_s, f"request {r.index} {r.tenant} {r.api} {r.kind} prompt={r.prompt_id} "
                                      f"max_tokens={r.max_tokens} {extras}".rstrip()))
        lines += [f"  t={t:6.2f}s {text}" for t, text in sorted(events, key=lambda e: e[0])]
        return "\n".join(lines)


def make_schedule(seed: int, config: ScheduleConfig | None = None, vocab_size: int = 2048) -> Schedule:
    """Draws a schedule from the seed: the same seed and config always give the same schedule."""
    config = config or ScheduleConfig()
    # One stream per part: the faults and the requests' timing do not depend on the vocabulary.
    prompts = _prompts(random.Random(f"{seed}:prompts"), vocab_size)
    faults = plan_faults(random.Random(f"{seed}:faults"), config)
    requests = _requests(random.Random(f"{seed}:requests"), config, prompts)
    return Schedule(seed, config, prompts, requests, faults)


def _prompts(rng: random.Random, vocab_size: int) -> list[PromptSpec]:
    prompts: list[PromptSpec] = []
    shared_prefix = [rng.randrange(3, vocab_size) for _ in range(64)]
    # Lengths from one block to many: long prompts keep KV transfers in flight when faults strike.
    for length in (3, 9, 17, 40, 95, 160, 300, 1200):
        prompts.append(PromptSpec(len(prompts), "tokens",
                                  tuple(rng.randrange(3, vocab_size) for _ in range(length))))
    for length in (20, 90):  # two prompts share four blocks of prefix: prefix reuse under faults
        tail = [rng.randrange(3, vocab_size) for _ in range(length)]
        prompts.append(PromptSpec(len(prompts), "tokens", tuple(shared_prefix + tail)))
    topics = ["prefill and decode", "paged KV caches", "continuous batching", "speculative decoding",
              "tensor parallelism", "the roofline model", "KV transfer over RDMA"]
    for topic in rng.sample(topics, 4):
        turns = (("system", "You answer briefly."), ("user", f"Tell me about {topic}."))
        prompts.append(PromptSpec(len(prompts), "chat", messages=turns))
    for topic in rng.sample(topics, 3):
        prompts.append(PromptSpec(len(prompts), "text", text=f"A short note on {topic}: "))
    return prompts


def _requests(rng: random.Random, config: ScheduleConfig, prompts: list[PromptSpec]) -> list[RequestSpec]:
    num_hostile = round(config.num_requests * config.hostile_fraction)
    # Every hostile kind at least once when there is room, in a seeded order.
    kinds = [HOSTILE_KINDS[i % len(HOSTILE_KINDS)].name for i in range(num_hostile)]
    rng.shuffle(kinds)
    starts = sorted(round(rng.uniform(0.0, config.duration_s), 3) for _ in range(config.num_requests))
    slots = list(range(config.num_requests))
    rng.shuffle(slots)
    hostile_slots = dict(zip(slots[:num_hostile], kinds))
    requests: list[RequestSpec] = []
    for index, start in enumerate(starts):
        if index in hostile_slots:
            requests.append(_hostile(rng, config, prompts, index, start, hostile_slots[index]))
        else:
            requests.append(_normal(rng, config, prompts, index, start))
    return _with_shared_ids(rng, config, requests)


def _normal(rng: random.Random, config: ScheduleConfig, prompts: list[PromptSpec], index: int,
            start: float) -> RequestSpec:
    prompt = rng.choice(prompts)
    api = "http" if rng.random() < config.http_fraction else "grpc"
    tenant = rng.choice(GOOD_TENANTS)
    is_sampled = rng.random() < config.sampled_fraction
    cancel_tokens = cancel_s = None
    if rng.random() < config.cancel_fraction:
        if rng.random() < 0.5:
            cancel_tokens = rng.randint(1, 4)
        else:
            cancel_s = round(rng.uniform(0.01, 0.3), 3)
    return RequestSpec(
        index=index, start_s=start, tenant=tenant, api=api, kind="normal",
        prompt_id=prompt.prompt_id, max_tokens=rng.choice((8, 16, 24, 32)),
        deadline_s=config.deadline_s, num_samples=2 if is_sampled else 1,
        temperature=0.8 if is_sampled else 0.0, seed=rng.randrange(2**31) if is_sampled else None,
        request_id=f"{tenant}-{index}" if rng.random() < 0.5 else "",
        cancel_after_tokens=cancel_tokens, cancel_after_s=cancel_s)


def _hostile(rng: random.Random, config: ScheduleConfig, prompts: list[PromptSpec], index: int,
             start: float, kind_name: str) -> RequestSpec:
    kind = KINDS_BY_NAME[kind_name]
    api = rng.choice(kind.apis)
    token_prompts = [p for p in prompts if p.form == "tokens"]
    target = ""
    if api == "worker":
        role = rng.choice(ROLES)
        target = f"{role}-{rng.randrange(config.num_prefill if role == 'prefill' else config.num_decode)}"
    return RequestSpec(
        index=index, start_s=start, tenant=HOSTILE_TENANT, api=api, kind=kind_name,
        prompt_id=rng.choice(token_prompts).prompt_id, max_tokens=rng.choice((8, 16, 24)),
        deadline_s=config.deadline_s, variant=rng.randrange(kind.num_variants), target=target,
        cancel_after_tokens=1 if kind_name == "duplicate_id_cancel" else None)


def _with_shared_ids(rng: random.Random, config: ScheduleConfig,
                     requests: list[RequestSpec]) -> list[RequestSpec]:
    """Gives pairs of good tenants' requests the same client id and start time; the hostile
    duplicate-id requests take the id of a good request that starts at the same time."""
    normal = [r for r in requests if r.kind == "normal" and not r.is_cancelled_by_client]
    by_index = {r.index: r for r in requests}
    for pair_index in range(min(config.num_duplicate_id_pairs, len(normal) // 2)):
        first, second = rng.sample(normal, 2)
        if first.tenant == second.tenant:
            second = replace(second, tenant=next(t for t in GOOD_TENANTS if t != first.tenant))
        shared = f"shared-{pair_index}"
        by_index[first.index] = replace(first, request_id=shared)
        by_index[second.index] = replace(second, request_id=shared, start_s=first.start_s)
        normal = [r for r in normal if r.index not in (first.index, second.index)]
    for request in [r for r in by_index.values() if r.kind == "duplicate_id_cancel"]:
        victim = rng.choice(normal)
        victim_id = victim.request_id or f"{victim.tenant}-{victim.index}"
        by_index[victim.index] = replace(victim, request_id=victim_id)
        by_index[request.index] = replace(request, request_id=victim_id, start_s=victim.start_s)
    return sorted(by_index.values(), key=lambda r: (r.start_s, r.index))


def fault_counts(schedule: Schedule) -> dict[str, int]:
    """How many faults of each kind the schedule injects (worker faults by role, cancels, hostile)."""
    counts: dict[str, int] = {}

    def add(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1

    for fault in schedule.faults:
        add(f"{fault.kind}:{fault.target.split('-')[0]}")
    for request in schedule.requests:
        if request.is_cancelled_by_client:
            add("client_cancel")
        if request.kind != "normal":
            add(f"hostile:{request.kind}")
    return dict(sorted(counts.items()))


