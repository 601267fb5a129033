"""The fault suite's invariants, checked on a finished run.

- ended: every request ended: complete (usage received, a finish reason for every sample), or a
  gRPC/HTTP status with a message, or cancelled by its own client.
- deadline: none ended later than its deadline plus the margin.
- outcome: each request ended in a way its overlapping faults allow (acceptable_classes). Hostile
  requests do not widen what is allowed: a well-behaved tenant's request that fails while only
  hostile requests overlapped it was affected by another tenant.
- hostile: hostile input is refused with its expected status, or (valid edge cases) served and
  passes its own check.
- output: greedy requests return exactly what the engine alone returns (a prefix when cut short).
- echo: responses carry the client's request id.
- blocks: every worker's used KV blocks return to their baseline.
- canary: no KV write landed in a released block (the workers' canary counters).
- metric_labels: no router metric series is labelled with a model name a client chose.
- rejoin: every restarted worker serves again, and requests after the last fault complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.faults.clients import Outcome
from tests.faults.fault_plan import KILL
from tests.faults.hostile import KINDS_BY_NAME
from tests.faults.injector import FaultWindow
from tests.faults.reference import Expected
from tests.faults.schedule import RequestSpec, Schedule

COMPLETE_REASONS = {"STOP", "LENGTH"}


@dataclass(slots=True, frozen=True)
class Violation:
    """One broken invariant."""

    invariant: str
    detail: str
    request: int | None = None

    def __str__(self) -> str:
        where = f" request {self.request}" if self.request is not None else ""
        return f"[{self.invariant}]{where}: {self.detail}"


@dataclass(slots=True)
class RunRecord:
    """Everything a run observed, for the checks."""

    schedule: Schedule
    outcomes: dict[int, Outcome]
    bodies: dict[int, object]  # RequestBody or WorkerCall
    windows: list[FaultWindow]
    expected: dict[tuple[int, int], Expected]
    blocks: dict[str, tuple[int, int]]  # worker -> (baseline, after the run)
    canary_total: float  # canary violations counted by every worker, killed ones included
    model_label_values: set[str]
    served_model: str
    margin_s: float
    workers_per_role: dict[str, int]
    max_worker_losses: int  # worker losses one request survives (retries and migrations)
    canary_lost: bool = False
    rejoin_problems: list[str] = field(default_factory=list)


def check_run(record: RunRecord) -> list[Violation]:
    """Every violation of the run, requests in index order, then the cluster-wide checks."""
    violations: list[Violation] = []
    for spec in record.schedule.requests:
        violations += _check_request(record, spec, record.outcomes[spec.index])
    for window in record.windows:
        if window.error:
            violations.append(Violation("harness", f"{window.kind} of {window.target}: {window.error}"))
    for worker, (baseline, after) in sorted(record.blocks.items()):
        if after != baseline:
            violations.append(Violation("blocks", f"{worker} holds {after} KV blocks after the run, "
                                                  f"{baseline} before it (-1: not answering)"))
    if record.canary_total > 0:
        violations.append(Violation("canary", f"{record.canary_total:g} KV writes or changes found in "
                                              f"released blocks (tandem_kv_canary_violations_total)"))
    if record.canary_lost:
        violations.append(Violation("canary", "a worker's canary count could not be read (or it exposes "
                                              "no tandem_kv_canary_violations_total): writes may go unseen"))
    violations += _check_labels(record)
    violations += [Violation("rejoin", problem) for problem in record.rejoin_problems]
    return violations


def _check_labels(record: RunRecord) -> list[Violation]:
    """Client-chosen model names must not become label values (a bounded stand-in is fine)."""
    sent = {body.model for spec in record.schedule.requests
            if spec.kind != "normal" and (body := record.bodies[spec.index]) is not None
            and getattr(body, "model", record.served_model) != record.served_model}
    leaked = sorted(v for v in record.model_label_values
                    if v and any(v == name or (len(v) >= 16 and v in name) for name in sent))
    if not leaked:
        return []
    shown = [v if len(v) <= 40 else f"{v[:20]}...({len(v)} chars)" for v in leaked]
    return [Violation("metric_labels", f"router series labelled with client-chosen model names: {shown}")]


def outcome_class(spec: RequestSpec, outcome: Outcome) -> str:
    """complete, deadline, unavailable, client_cancelled, or the status (or finish reasons) itself."""
    if outcome.status == "OK":
        reasons = set(outcome.finish_reasons.values())
        if reasons <= COMPLETE_REASONS:
            return "complete"
        if "DEADLINE" in reasons and reasons <= COMPLETE_REASONS | {"DEADLINE"}:
            return "deadline"
        return "finished:" + ",".join(sorted(reasons - COMPLETE_REASONS))
    return {"DEADLINE_EXCEEDED": "deadline", "UNAVAILABLE": "unavailable",
            "CLIENT_CANCELLED": "client_cancelled"}.get(outcome.status, outcome.status)


def acceptable_classes(record: RunRecord, spec: RequestSpec, outcome: Outcome) -> tuple[set[str], str]:
    """The classes a valid request may end in given the faults that overlapped it, and why."""
    allowed = {"complete"}
    if spec.is_cancelled_by_client:
        allowed.add("client_cancelled")
    overlapping = [w for w in record.windows if w.overlaps(outcome.started_at, outcome.ended_at)]
    if overlapping:
        # A stalled or restarting worker can hold a request until its deadline passes.
        allowed.add("deadline")
    kills = [w for w in overlapping if w.kind == KILL]
    exhausted = _exhausted_roles(overlapping, record.workers_per_role, outcome.started_at)
    # Without a prefill worker the router prefills on the decode worker: only an empty decode
    # pool, or more lost workers than retries and migrations cover, excuses UNAVAILABLE.
    if "decode" in exhausted or len(kills) > record.max_worker_losses:
        allowed.add("unavailable")
    why = ", ".join(f"{w.kind} {w.target}" for w in overlapping) or "no fault"
    if exhausted:
        why += f"; every {'/'.join(sorted(exhausted))} worker was down at once"
    return allowed, why


def _check_request(record: RunRecord, spec: RequestSpec, outcome: Outcome) -> list[Violation]:
    found: list[Violation] = []
    index = spec.index
    status_text = f"{outcome.status}: {outcome.message[:300]}" if outcome.message else outcome.status
    if outcome.status in ("HUNG", "NO_USAGE", "HARNESS_ERROR"):
        found.append(Violation("ended", f"{spec.kind} {spec.api} request {status_text}", index))
        return found
    if outcome.status not in ("OK", "CLIENT_CANCELLED") and not outcome.message.strip():
        found.append(Violation("ended", f"status {outcome.status} came without a message", index))
    if outcome.status == "OK":
        missing = [s for s in range(_num_samples(record, spec)) if s not in outcome.finish_reasons]
        if missing:
            found.append(Violation("ended", f"samples {missing} ended without a finish reason "
                                            f"(finish reasons: {outcome.finish_reasons})", index))
    if outcome.seconds > spec.deadline_s + record.margin_s:
        found.append(Violation("deadline", f"ended after {outcome.seconds:.1f}s; deadline "
                                           f"{spec.deadline_s:g}s + margin {record.margin_s:g}s", index))
    kind = KINDS_BY_NAME.get(spec.kind)
    if kind is not None and kind.expected is not None:
        found += _check_refusal(record, spec, outcome, kind.expected, status_text)
        return found
    found += _check_served(record, spec, outcome, status_text)
    if kind is not None and kind.check is not None and (problem := kind.check(outcome)):
        found.append(Violation("hostile", f"{spec.kind}: {problem}", index))
    return found


def _check_refusal(record: RunRecord, spec: RequestSpec, outcome: Outcome, expected: frozenset[str],
                   status_text: str) -> list[Violation]:
    allowed = set(expected)
    if spec.api == "worker":
        # The worker itself may be down or stopped when the call comes.
        body = record.bodies[spec.index]
        if any(w.target == body.target and w.overlaps(outcome.started_at, outcome.ended_at)
               for w in record.windows):
            allowed |= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    if outcome.status in allowed:
        return []
    return [Violation("hostile", f"{spec.kind} (variant {spec.variant}, {spec.api}) must be refused "
                                 f"with {sorted(allowed)}, got {status_text}", spec.index)]


def _check_served(record: RunRecord, spec: RequestSpec, outcome: Outcome,
                  status_text: str) -> list[Violation]:
    found: list[Violation] = []
    cls = outcome_class(spec, outcome)
    allowed, why = acceptable_classes(record, spec, outcome)
    if cls not in allowed:
        invariant = "outcome" if spec.kind == "normal" else "hostile"
        found.append(Violation(invariant, f"{spec.tenant} {spec.kind} {spec.api} request ended "
                                          f"{cls} ({status_text}, finish {outcome.finish_reasons}); "
                                          f"allowed {sorted(allowed)} given {why}", spec.index))
    body = record.bodies[spec.index]
    is_echo_missing = outcome.status == "OK" and not outcome.echoed_ids
    if body.request_id and (outcome.echoed_ids - {body.request_id} or is_echo_missing):
        found.append(Violation("echo", f"sent request id {body.request_id[:80]!r}, responses carried "
                                       f"{sorted(i[:80] for i in outcome.echoed_ids)}", spec.index))
    kind = KINDS_BY_NAME.get(spec.kind)
    compares = spec.is_greedy and (kind is None or kind.compares_output)
    expected = record.expected.get((spec.prompt_id, body.max_tokens)) if compares else None
    if expected is not None:
        problem = _output_problem(spec, outcome, expected, is_whole=cls == "complete")
        if problem:
            found.append(Violation("output", problem, spec.index))
    return found


def _output_problem(spec: RequestSpec, outcome: Outcome, expected: Expected, is_whole: bool) -> str | None:
    if spec.api == "grpc":
        got, want = list(outcome.token_ids), list(expected.token_ids)
        if got == want or (not is_whole and want[:len(got)] == got):
            return None
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        return (f"token ids differ from the engine alone's at position {at}: got {got[at:at + 5]}..., "
                f"expected {want[at:at + 5]}... ({len(got)} vs {len(want)} tokens)")
    got, want = outcome.text, expected.text
    if got == want or (not is_whole and want.startswith(got)):
        return None
    return f"text differs from the engine alone's: got {got[:80]!r}, expected {want[:80]!r}"


def _exhausted_roles(windows: list[FaultWindow], workers_per_role: dict[str, int],
                     since: float) -> set[str]:
    """Roles whose every worker was down or stopped at one moment after `since` (the windows
    overlap the request, so checking where each begins, or `since`, finds every such moment)."""
    exhausted = set()
    for window in windows:
        moment = max(window.started_at, since)
        down = {w.target for w in windows if w.role == window.role and w.overlaps(moment, moment)}
        if len(down) >= workers_per_role.get(window.role, 0):
            exhausted.add(window.role)
    return exhausted


def _num_samples(record: RunRecord, spec: RequestSpec) -> int:
    body = record.bodies[spec.index]
    return getattr(body, "num_samples", 1)
