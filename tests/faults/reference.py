"""What the engine alone makes of each greedy request: the output the cluster must reproduce."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.engine.sampling_params import SamplingParams
from tests.faults.request_body import PromptSpec


@dataclass(slots=True, frozen=True)
class Expected:
    """The engine-alone output of one (prompt, max_tokens) pair."""

    token_ids: tuple[int, ...]
    text: str


def prompt_token_ids(tokenizer, prompt: PromptSpec) -> list[int]:
    """The prompt's token ids as the router makes them (chat template, or plain encoding)."""
    if prompt.form == "tokens":
        return list(prompt.token_ids)
    if prompt.form == "chat":
        messages = [{"role": role, "content": content} for role, content in prompt.messages]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(prompt.text)


def expected_outputs(engine, pairs: set[tuple[PromptSpec, int]]) -> dict[tuple[int, int], Expected]:
    """Greedy outputs for each (prompt, max_tokens), keyed by (prompt_id, max_tokens)."""
    ordered = sorted(pairs, key=lambda pair: (pair[0].prompt_id, pair[1]))
    prompts = [prompt_token_ids(engine.tokenizer, prompt) for prompt, _ in ordered]
    params = [SamplingParams(temperature=0.0, max_tokens=max_tokens) for _, max_tokens in ordered]
    completions = engine.generate(prompts, params)
    return {(prompt.prompt_id, max_tokens): Expected(tuple(c.token_ids), c.text)
            for (prompt, max_tokens), c in zip(ordered, completions)}
