"""A decode request's samples start from one prefilled prompt: forks that share its KV blocks.

Sample 0's engine request holds the prompt's KV: a claimed reservation (disaggregated), or a
prefill-only request this worker ran itself (colocated). Every other sample is a copy-on-write
fork of that prompt (`LLMEngine.fork_prompt`): it shares the prompt's blocks and computes only the
prompt's last token again, to draw its own first token. Between a colocated prefill and the
samples, the worker's probe scores the prompt, and the router's probe steps may tighten the
thinking budget before any sample goes on.
"""

from __future__ import annotations

import dataclasses

from decode_worker.chunks import DecodeFailed
from tandem.api.v1 import worker_pb2
from tandem.engine.request_output import RequestOutput
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.sequence import FinishReason
from tandem.policy.probe_steps import ProbeStep, as_float32
from tandem.serving.engine_loop import EngineFailure
from tandem.serving.params import tighter_budget


async def prefill_here(loop, probe, group, request: worker_pb2.DecodeRequest, prompt: list[int],
                       params: SamplingParams):
    """Colocated: prefills the prompt as sample 0's prefill-only request, scores it with the probe,
    and puts its first output first in the group's stream. Returns (first token, whether sample 0
    goes on, the budget after the probe), or None when the request ended meanwhile."""
    engine_id = group.engine_id(0)
    loop.open_stream(engine_id, group.queue)
    group.owned.add(0)
    await loop.call(loop.engine.add_request, engine_id, prompt, params, prefill_only=True)
    output = await _prefill_output(group)
    if output is None:
        return None
    budget = request.budget
    if probe is not None and output.hidden_state is not None:
        group.probe_difficulty = as_float32(float(probe.score_hidden(output.hidden_state.numpy()[None])[0]))
        budget = budget_after_probe(budget, request.probe_budgets, group.probe_difficulty)
    has_ended = output.finish_reason is not FinishReason.PREFILLED
    if not has_ended:
        output = dataclasses.replace(output, finished=False, finish_reason=None)
    group.backlog.appendleft(output)
    return output.new_token_ids[0], not has_ended and 0 in group.running, budget


async def _prefill_output(group) -> RequestOutput | None:
    """The prefill's output; None when every sample was cancelled or the deadline passed first.
    Cancellations that come before it wait in the backlog."""
    set_aside = []
    try:
        while group.running:
            event = await group.next_event()
            if event is None:
                return None
            if isinstance(event, EngineFailure):
                raise DecodeFailed(event.message)
            if isinstance(event, RequestOutput):
                return event
            set_aside.append(event)
        return None
    finally:
        group.backlog.extend(set_aside)


def start_samples(engine, engine_ids: dict[int, str], prompt: list[int], first_token_id: int,
                  params: dict[int, SamplingParams], is_sample0_going_on: bool) -> None:
    """Engine thread: forks samples > 0 off sample 0's prompt, then continues sample 0 from its
    first token, or frees the prompt when sample 0 has already ended. All or nothing."""
    parent = engine_ids[0]
    forked: list[str] = []
    try:
        for index in sorted(i for i in params if i > 0):
            engine.fork_prompt(parent, engine_ids[index], params[index])
            forked.append(engine_ids[index])
        if is_sample0_going_on:
            engine.add_prefilled_request(parent, prompt, first_token_id, params[0])
        else:
            engine.release(parent)
    except BaseException:
        for engine_id in forked:
            engine.abort(engine_id)
        raise


def budget_after_probe(budget: worker_pb2.DecodeBudget, probe_budgets,
                       probe_difficulty: float) -> worker_pb2.DecodeBudget:
    """The budget with the thinking cap that the request's probe steps give (never looser)."""
    steps = [ProbeStep(step.min_probe_difficulty, step.max_thinking_tokens) for step in probe_budgets]
    return tighter_budget(budget, steps, probe_difficulty) or budget
