"""The fault suite's own parts, without a cluster: schedules are seeded, checks can fail."""

from __future__ import annotations

import pytest

from tests.faults.clients import Outcome
from tests.faults.hostile import HOSTILE_KINDS
from tests.faults.injector import FaultWindow
from tests.faults.invariants import RunRecord, check_run
from tests.faults.reference import Expected
from tests.faults.request_body import PromptSpec, RequestBody
from tests.faults.fault_plan import KILL, STALL
from tests.faults.schedule import RequestSpec, Schedule, ScheduleConfig, make_schedule


def test_a_seed_fixes_the_schedule():
    assert make_schedule(7).describe() == make_schedule(7).describe()
    assert make_schedule(7).describe() != make_schedule(8).describe()
    # The vocabulary changes the prompts, not when faults and requests happen.
    assert make_schedule(7, vocab_size=1000).faults == make_schedule(7, vocab_size=2000).faults


@pytest.mark.parametrize("seed", range(20))
def test_every_fault_and_hostile_kind_is_in_a_default_schedule(seed):
    schedule = make_schedule(seed)
    kinds = {(f.kind, f.target.split("-")[0]) for f in schedule.faults}
    assert kinds == {(KILL, "prefill"), (KILL, "decode"), (STALL, "prefill"), (STALL, "decode")}
    assert {r.kind for r in schedule.requests} >= {k.name for k in HOSTILE_KINDS}
    assert any(r.is_cancelled_by_client for r in schedule.requests)


@pytest.mark.parametrize("seed", range(20))
def test_without_outages_a_pool_always_keeps_a_worker(seed):
    for role in ("prefill", "decode"):
        faults = [f for f in make_schedule(seed).faults if f.target.startswith(role)]
        assert faults[-1].kind == KILL  # a restart takes an unknown time: nothing may follow it
        for earlier, later in zip(faults, faults[1:]):
            assert later.start_s > earlier.start_s + earlier.duration_s


def test_outages_are_possible_when_allowed():
    config = ScheduleConfig(allow_role_outage=True)
    overlapping = 0
    for seed in range(30):
        decode = [f for f in make_schedule(seed, config).faults if f.target.startswith("decode")]
        first, second = sorted(decode, key=lambda f: f.start_s)
        overlapping += second.start_s < first.start_s + first.duration_s or first.kind == KILL
    assert overlapping > 0


PROMPT = PromptSpec(0, "tokens", (5, 6, 7))


def _record(specs, outcomes, windows=(), blocks=None, canary=0.0, expected=None) -> RunRecord:
    schedule = Schedule(1, ScheduleConfig(), [PROMPT], list(specs), [])
    bodies = {s.index: RequestBody("k", "tiny", PROMPT, s.max_tokens, s.deadline_s, request_id=s.request_id)
              for s in specs}
    return RunRecord(schedule=schedule, outcomes={o.index: o for o in outcomes}, bodies=bodies,
                     windows=list(windows), expected=expected or {}, blocks=blocks or {"decode-0": (0, 0)},
                     canary_total=canary, model_label_values={"tiny"}, served_model="tiny", margin_s=5.0,
                     workers_per_role={"prefill": 2, "decode": 2}, max_worker_losses=2)


def _spec(index=0, **changes) -> RequestSpec:
    fields = dict(index=index, start_s=0.0, tenant="alpha", api="grpc", kind="normal", prompt_id=0,
                  max_tokens=4, deadline_s=10.0)
    return RequestSpec(**{**fields, **changes})


def _outcome(index=0, status="OK", start=100.0, end=101.0, tokens=(1, 2), reasons=None) -> Outcome:
    return Outcome(index, status=status, message="" if status == "OK" else "why", started_at=start,
                   ended_at=end, token_ids=list(tokens), finish_reasons=reasons or {0: "LENGTH"})


def _invariants(record) -> list[str]:
    return sorted(v.invariant for v in check_run(record))


def test_a_clean_run_has_no_violation():
    expected = {(0, 4): Expected((1, 2), "")}
    assert _invariants(_record([_spec()], [_outcome()], expected=expected)) == []


def test_a_failure_with_no_fault_around_breaks_the_outcome_invariant():
    assert _invariants(_record([_spec()], [_outcome(status="UNAVAILABLE")])) == ["outcome"]


def test_unavailable_is_excused_only_when_the_decode_pool_was_empty():
    kill = FaultWindow(KILL, "decode-0", 99.0, 105.0)
    stall = FaultWindow(STALL, "decode-1", 100.5, 103.0)
    other_stall = FaultWindow(STALL, "prefill-1", 100.5, 103.0)
    failed = _outcome(status="UNAVAILABLE")
    assert _invariants(_record([_spec()], [failed], [kill])) == ["outcome"]
    assert _invariants(_record([_spec()], [failed], [kill, other_stall])) == ["outcome"]
    assert _invariants(_record([_spec()], [failed], [kill, stall])) == []


def test_wrong_or_missing_output_and_late_or_hung_requests_are_caught():
    expected = {(0, 4): Expected((1, 2, 3), "")}
    specs = [_spec(0), _spec(1), _spec(2), _spec(3)]
    outcomes = [_outcome(0, tokens=(1, 9, 3)), _outcome(1, reasons={1: "STOP"}),
                _outcome(2, end=100.0 + 10.0 + 5.0 + 1.0, tokens=(1, 2, 3)),
                _outcome(3, status="HUNG", tokens=())]
    found = check_run(_record(specs, outcomes, expected=expected))
    assert [(v.request, v.invariant) for v in found] == [
        (0, "output"), (1, "ended"), (1, "output"), (2, "deadline"), (3, "ended")]


def test_a_deadline_cut_needs_a_fault_and_keeps_a_prefix_of_the_output():
    expected = {(0, 4): Expected((1, 2, 3), "")}
    cut = _outcome(tokens=(1, 2), reasons={0: "DEADLINE"})
    stall = FaultWindow(STALL, "decode-0", 100.2, 100.5)
    assert _invariants(_record([_spec()], [cut], expected=expected)) == ["outcome"]
    assert _invariants(_record([_spec()], [cut], [stall], expected=expected)) == []


def test_hostile_input_must_get_its_status():
    spec = _spec(kind="long_request_id", tenant="mallory")
    assert _invariants(_record([spec], [_outcome(status="INVALID_ARGUMENT")])) == []
    assert _invariants(_record([spec], [_outcome()])) == ["hostile"]
    assert _invariants(_record([spec], [_outcome(status="INVALID_ARGUMENT", tokens=())])) == []


def test_leaked_blocks_canary_hits_and_an_unread_canary_are_violations():
    assert _invariants(_record([_spec()], [_outcome()], blocks={"decode-1": (0, 3)})) == ["blocks"]
    assert _invariants(_record([_spec()], [_outcome()], canary=2.0)) == ["canary"]
    unread = _record([_spec()], [_outcome()])
    unread.canary_lost = True
    assert _invariants(unread) == ["canary"]


def test_responses_must_carry_the_clients_request_id():
    spec = _spec(request_id="alpha-1")
    for echoed, expected in (({"alpha-1"}, []), ({""}, ["echo"]), ({"alpha-1", "x"}, ["echo"]), (set(), ["echo"])):
        outcome = _outcome()
        outcome.echoed_ids = set(echoed)
        assert _invariants(_record([spec], [outcome])) == expected, echoed
