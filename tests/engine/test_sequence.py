"""Sequence state: the thinking section and its budget."""

from __future__ import annotations

from tandem.engine.sampling_params import SamplingParams
from tandem.engine.sequence import Sequence, TokenSection


def seq(**params) -> Sequence:
    return Sequence("r", [1, 2, 3], SamplingParams(**params))


def test_thinking_budget_forces_the_delimiter_after_exactly_b_tokens():
    thinking = seq(max_thinking_tokens=2, think_end_token_ids=(90, 91), starts_in_thinking=True)
    assert not thinking.forced_token_ids
    thinking.append_token(5)
    thinking.append_token(6)
    assert list(thinking.forced_token_ids) == [90, 91]
    thinking.append_token(90)
    thinking.append_token(91)
    assert not thinking.is_thinking and not thinking.forced_token_ids
    assert thinking.append_token(8) is TokenSection.ANSWER


def test_closing_the_section_itself_forces_nothing_and_a_new_section_can_open():
    thinking = seq(max_thinking_tokens=3, think_start_token_ids=(80,), think_end_token_ids=(90,))
    assert thinking.append_token(4) is TokenSection.ANSWER
    assert thinking.append_token(80) is TokenSection.THINKING
    thinking.append_token(5)
    assert thinking.append_token(90) is TokenSection.THINKING
    assert not thinking.is_thinking and not thinking.forced_token_ids
    zero_budget = seq(max_thinking_tokens=0, think_end_token_ids=(90,), starts_in_thinking=True)
    assert list(zero_budget.forced_token_ids) == [90]


def test_a_delimiter_inside_the_prompt_does_not_open_a_section():
    prompt_opens = Sequence("r", [80, 1], SamplingParams(think_start_token_ids=(1,)))
    assert not prompt_opens.is_thinking
    assert prompt_opens.append_token(2) is TokenSection.ANSWER


def test_fork_copies_progress_and_thinking_state_with_its_own_params():
    parent = seq(max_thinking_tokens=5, think_end_token_ids=(90,), starts_in_thinking=True, seed=1)
    parent.append_token(4)
    parent.block_ids = [3, 4]
    parent.num_computed_tokens = 3
    child = parent.fork("r/1", SamplingParams(max_thinking_tokens=1, think_end_token_ids=(90,), seed=2))
    assert child.token_ids == [1, 2, 3, 4] and child.num_prompt_tokens == 3
    assert child.block_ids == [3, 4] and child.block_ids is not parent.block_ids
    assert child.is_thinking and child.num_thinking_tokens == 1
    assert list(child.forced_token_ids) == [90]  # its own budget of 1 is already spent
    assert not parent.forced_token_ids
