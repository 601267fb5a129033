"""Hostile and edge-case inputs of issue 10, each with the outcomes it may have.

A kind either is valid input that must be served like any other request (`expected` is None:
judged like a well-behaved request, plus its own `check`), or must be refused with one of the
`expected` statuses and a message. Either way it must not affect any other request.
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, replace

from tests.faults.request_body import RequestBody, WorkerCall

INVALID = frozenset({"INVALID_ARGUMENT"})
# Worker calls that carry no worker token must be refused (issue 10, item 9).
REFUSED_WORKER_CALL = frozenset({"UNAUTHENTICATED"})


@dataclass(slots=True, frozen=True)
class HostileKind:
    """One kind of hostile input."""

    name: str
    apis: tuple[str, ...]
    num_variants: int
    # None: valid input, served like a normal request. Else the statuses it may end with.
    expected: frozenset[str] | None
    # A kind-specific check of a served request's outcome; returns what is wrong, or None.
    check: Callable[[object], str | None] | None = None
    # Whether its output must equal the engine alone's (budgets that force tokens change it).
    compares_output: bool = True


def _check_one_token(outcome) -> str | None:
    if outcome.status == "OK" and outcome.num_completion_tokens != 1:
        return f"max_tokens=1 produced {outcome.num_completion_tokens} tokens"
    return None


def _check_no_thinking(outcome) -> str | None:
    # Budget 0 forces the end-of-thinking delimiter at once; the delimiter and the prefill's first
    # token are the most that may be counted as thinking.
    if outcome.status == "OK" and outcome.num_thinking_tokens > 2:
        return (f"max_thinking_tokens=0 allowed {outcome.num_thinking_tokens} thinking tokens "
                f"(0 must not mean unlimited)")
    return None


HOSTILE_KINDS: tuple[HostileKind, ...] = (
    HostileKind("mid_request_id", ("grpc", "http"), 3, None),
    HostileKind("hash_request_id", ("grpc", "http"), 3, None),
    HostileKind("one_max_tokens", ("grpc", "http"), 1, None, _check_one_token),
    HostileKind("zero_thinking_budget", ("grpc", "http"), 1, None, _check_no_thinking,
                compares_output=False),
    HostileKind("duplicate_id_cancel", ("grpc", "http"), 1, None),
    HostileKind("long_request_id", ("grpc", "http"), 3, INVALID),
    HostileKind("control_char_request_id", ("grpc", "http"), 2, INVALID),
    HostileKind("huge_prompt", ("grpc", "http"), 2, frozenset({"INVALID_ARGUMENT", "PAYLOAD_TOO_LARGE"})),
    HostileKind("over_context_prompt", ("grpc", "http"), 2, INVALID),
    HostileKind("out_of_vocab_tokens", ("grpc", "http"), 1, INVALID),
    HostileKind("unknown_model", ("grpc", "http"), 1, frozenset({"NOT_FOUND"})),
    HostileKind("huge_model_name", ("grpc", "http"), 1, frozenset({"NOT_FOUND", "INVALID_ARGUMENT"})),
    HostileKind("zero_max_tokens", ("grpc", "http"), 1, INVALID),
    HostileKind("bad_deadline", ("grpc", "http"), 4, INVALID),
    HostileKind("bad_sampling", ("grpc", "http"), 3, INVALID),
    HostileKind("bad_api_key", ("grpc", "http"), 1, frozenset({"UNAUTHENTICATED"})),
    HostileKind("worker_direct", ("worker",), 5, REFUSED_WORKER_CALL),
)
KINDS_BY_NAME = {kind.name: kind for kind in HOSTILE_KINDS}


def hostile_body(kind: str, variant: int, body: RequestBody, seed: int, vocab_size: int,
                 max_context: int) -> RequestBody:
    """The well-formed body turned into the hostile kind's variant (deterministic for the seed)."""
    rng = random.Random(seed)
    if kind == "mid_request_id":
        return replace(body, request_id=_printable(rng, (65, 100, 128)[variant]))
    if kind == "hash_request_id":
        return replace(body, request_id=("x#1", "x#0", "a#b#2")[variant])
    if kind == "one_max_tokens":
        return replace(body, max_tokens=1)
    if kind == "zero_thinking_budget":
        return replace(body, thinking=True, max_thinking_tokens=0)
    if kind == "duplicate_id_cancel":
        return body  # the schedule gave it another tenant's id; the client cancels after a token
    if kind == "long_request_id":
        return replace(body, request_id=_printable(rng, (129, 5_000, 100_000)[variant]))
    if kind == "control_char_request_id":
        return replace(body, request_id=("bad\nid", "id\x00with-nul")[variant])
    if kind == "huge_prompt":
        size = (1_500_000, 3_000_000)[variant]
        return replace(body, prompt=replace(body.prompt, form="text", token_ids=(),
                                            text="many words " * (size // 11)))
    if kind == "over_context_prompt":
        length = max_context + (1, 2_000)[variant]
        ids = tuple(rng.randrange(3, vocab_size) for _ in range(length))
        return replace(body, prompt=replace(body.prompt, form="tokens", token_ids=ids))
    if kind == "out_of_vocab_tokens":
        ids = body.prompt.token_ids[:5] + (vocab_size, vocab_size + 7)
        return replace(body, prompt=replace(body.prompt, form="tokens", token_ids=ids))
    if kind == "unknown_model":
        return replace(body, model=f"model-{rng.getrandbits(32):08x}")
    if kind == "huge_model_name":
        return replace(body, model="m" * 5_000 + f"{rng.getrandbits(32):08x}")
    if kind == "zero_max_tokens":
        return replace(body, max_tokens=0)
    if kind == "bad_deadline":
        return replace(body, deadline_s=(0.0, -1.0, math.nan, math.inf)[variant])
    if kind == "bad_sampling":
        return [replace(body, temperature=7.0), replace(body, top_p=0.0),
                replace(body, num_samples=1_000)][variant]
    if kind == "bad_api_key":
        return replace(body, api_key="sk-guessed-" + _printable(rng, 16))
    raise ValueError(f"unknown hostile kind {kind!r}")


def worker_call(variant: int, target: str, seed: int, prompt_token_ids: tuple[int, ...]) -> WorkerCall:
    """A direct call to a worker without the worker token (Reserve goes to a decode worker)."""
    rng = random.Random(seed)
    index = target.rsplit("-", 1)[1]
    if variant <= 2:
        request_id, lease = [("x" * 200, math.inf), ("x#1", math.nan), ("probe", 1e9)][variant]
        return WorkerCall(f"decode-{index}", "Reserve", request_id, lease, prompt_token_ids)
    if variant == 3:
        return WorkerCall(target, "Cancel", f"alpha-{rng.randrange(100)}")
    return WorkerCall(target, "GetLoad")


def _printable(rng: random.Random, length: int) -> str:
    alphabet = string.ascii_letters + string.digits + "-_.:~"
    return "".join(rng.choice(alphabet) for _ in range(length))
