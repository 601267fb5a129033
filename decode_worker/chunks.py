"""Engine outputs to DecodeChunks: sample index, sections, logprobs, finish reason, the ceiling cut."""

from __future__ import annotations

import logging

from decode_worker.samples import SampleGroup
from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.engine.request_output import RequestOutput
from tandem.engine.sequence import FinishReason, TokenSection
from tandem.serving.params import logprob_message
from tandem.telemetry.metrics import default_metrics

log = logging.getLogger(__name__)

# Every way the engine ends a decoding sample. FinishReason.PREFILLED is absent on purpose: it ends
# the prefill-only request of a colocated prompt, which the worker turns into sample 0 before it
# streams (prompt_samples), so meeting it here is an error.
FINISH_REASONS = {
    FinishReason.STOP: inference_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: inference_pb2.FINISH_REASON_LENGTH,
    FinishReason.ABORT: inference_pb2.FINISH_REASON_CANCELLED,
}
SECTIONS = {TokenSection.THINKING: inference_pb2.TOKEN_SECTION_THINKING,
            TokenSection.ANSWER: inference_pb2.TOKEN_SECTION_ANSWER}
COST_DETAIL = "request token ceiling (max_cost) reached"


class DecodeFailed(RuntimeError):
    """The request cannot go on for a reason inside this worker; its stream ends with INTERNAL."""


def output_chunk(group: SampleGroup, output: RequestOutput, tokenizer, *, with_prompt_info: bool,
                 with_hidden_state: bool = False) -> worker_pb2.DecodeChunk | None:
    """The chunk for one engine output of a running sample (None once the sample has stopped).

    with_prompt_info: the first chunk of a colocated request, which says what the prompt cost
    (cached tokens), the probe's difficulty and, with_hidden_state, the prompt's hidden state.
    """
    index = group.sample_index(output.request_id)
    if index not in group.running:
        return None
    chunk = worker_pb2.DecodeChunk(
        request_id=group.request_id, sample_index=index, token_ids=output.new_token_ids,
        sections=[SECTIONS[s] for s in output.new_sections])
    if output.new_logprobs:
        chunk.logprobs.extend(logprob_message(tokenizer, lp.token_id, lp.logprob, lp.top)
                              for lp in output.new_logprobs)
    if with_prompt_info:
        chunk.num_cached_prompt_tokens = output.num_cached_prompt_tokens
        if group.probe_difficulty is not None:
            chunk.probe_difficulty = group.probe_difficulty
        if with_hidden_state and output.hidden_state is not None:
            chunk.hidden_state.extend(output.hidden_state.tolist())
    if output.finished:
        group.running.discard(index)
        chunk.finish_reason = wire_finish_reason(group.request_id, index, output.finish_reason)
        chunk.finish_detail = output.finish_reason.value
    return chunk


def wire_finish_reason(request_id: str, sample_index: int, reason: FinishReason | None) -> int:
    """The wire form of an engine finish reason; an unknown one is logged, counted and raises DecodeFailed."""
    wire_reason = FINISH_REASONS.get(reason)
    if wire_reason is None:
        log.warning("engine ended sample %d of request %r with finish reason %r, which this worker "
                    "does not know", sample_index, request_id, reason)
        default_metrics().dropped_errors.labels(component="decode_worker",
                                                kind="unknown_finish_reason").inc()
        raise DecodeFailed(f"sample {sample_index} of request {request_id!r} ended with an unknown "
                           f"finish reason {reason!r}")
    return wire_reason


def truncate(chunk: worker_pb2.DecodeChunk, num_allowed: int | None) -> bool:
    """Cuts a chunk to the tokens the request-wide ceiling still allows; True if it cut."""
    if num_allowed is None or len(chunk.token_ids) <= num_allowed:
        return False
    del chunk.token_ids[num_allowed:]
    del chunk.logprobs[num_allowed:]
    del chunk.sections[num_allowed:]
    chunk.finish_reason = inference_pb2.FINISH_REASON_COST
    chunk.finish_detail = COST_DETAIL
    return True
