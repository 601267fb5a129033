"""Converts wire sampling and budget messages into the engine's SamplingParams."""

from __future__ import annotations

from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.engine.sampling_params import SamplingParams
from tandem.policy.probe_steps import ProbeStep, tighter_thinking_budget


def tighter_budget(budget: worker_pb2.DecodeBudget, steps: list[ProbeStep],
                       probe_difficulty: float) -> worker_pb2.DecodeBudget | None:
    """A copy of `budget` with the thinking cap the probe steps give for this difficulty, or None
    when they do not tighten it (the probe never loosens a budget)."""
    current = budget.max_thinking_tokens if budget.HasField("max_thinking_tokens") else None
    thinking = tighter_thinking_budget(current, steps, probe_difficulty)
    if thinking is None:
        return None
    tighter = worker_pb2.DecodeBudget()
    tighter.CopyFrom(budget)
    tighter.max_thinking_tokens = thinking
    return tighter


def engine_params(sampling: inference_pb2.SamplingParams, tokenizer, *, max_tokens: int,
                  budget: worker_pb2.DecodeBudget | None = None,
                  sample_index: int = 0) -> SamplingParams:
    """SamplingParams for one sample; raises ValueError (naming the field) on bad values.

    Sample i of a seeded request uses seed + i, so every sample is reproducible on its own and
    equals an independent request made with that seed. An unset thinking budget means no limit;
    0 means none: the end-of-thinking delimiter is forced as soon as a thinking section is open.
    """
    seed = sampling.seed + sample_index if sampling.HasField("seed") else None
    has_thinking_budget = budget is not None and budget.HasField("max_thinking_tokens")
    max_thinking = budget.max_thinking_tokens if has_thinking_budget else None
    think_end = tuple(tokenizer.think_end_token_ids) if max_thinking is not None else ()
    return SamplingParams(
        temperature=sampling.temperature if sampling.HasField("temperature") else 1.0,
        top_p=sampling.top_p if sampling.HasField("top_p") else 1.0,
        top_k=sampling.top_k if sampling.HasField("top_k") else 0,
        seed=seed,
        max_tokens=max_tokens,
        stop=tuple(sampling.stop),
        stop_token_ids=tuple(sampling.stop_token_ids),
        logprobs=sampling.logprobs,
        top_logprobs=sampling.top_logprobs,
        max_thinking_tokens=max_thinking,
        think_start_token_ids=tuple(tokenizer.think_start_token_ids or ()),
        think_end_token_ids=think_end,
        starts_in_thinking=bool(budget.starts_in_thinking) if budget is not None else False,
    )


def logprob_message(tokenizer, token_id: int, logprob: float,
                    top: list[tuple[int, float]] | None) -> inference_pb2.TokenLogprob:
    """The wire form of one token's logprob and its alternatives."""
    return inference_pb2.TokenLogprob(
        token_id=token_id, token=tokenizer.decode([token_id]), logprob=logprob,
        top=[inference_pb2.TopLogprob(token_id=t, token=tokenizer.decode([t]), logprob=lp)
             for t, lp in (top or [])])
