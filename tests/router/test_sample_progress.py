"""The router's record of relayed tokens: the request-wide ceiling across samples, and the request
that resumes a lost sample."""

from __future__ import annotations

from router.sample_progress import SampleProgress, resumed_request
from tandem.api.v1 import inference_pb2, worker_pb2

COST = inference_pb2.FINISH_REASON_COST
LENGTH = inference_pb2.FINISH_REASON_LENGTH


def _chunk(index: int, token_ids: list[int], finish: int = 0) -> worker_pb2.DecodeChunk:
    return worker_pb2.DecodeChunk(sample_index=index, token_ids=token_ids,
                                  sections=[inference_pb2.TOKEN_SECTION_ANSWER] * len(token_ids),
                                  finish_reason=finish)


def test_the_ceiling_spans_samples_that_stream_from_different_workers():
    progress = SampleProgress(num_samples=3, max_total_tokens=10)
    progress.record_first_token(5)
    assert [c.token_ids for c in progress.record(_chunk(1, [1, 2, 3, 4]))] == [[1, 2, 3, 4]]
    assert progress.tokens_left() == 5

    relayed = progress.record(_chunk(2, [7, 8, 9, 10, 11, 12, 13]))

    assert list(relayed[0].token_ids) == [7, 8, 9, 10, 11] and list(relayed[0].sections) == [2] * 5
    assert [(c.sample_index, c.finish_reason) for c in relayed] == [(2, COST), (0, COST), (1, COST)]
    assert progress.num_tokens == 10 and progress.unfinished() == []
    assert progress.record(_chunk(0, [3])) == [], "a finished sample relays nothing more"


def test_a_chunk_that_exactly_spends_the_ceiling_ends_every_sample_with_cost():
    progress = SampleProgress(num_samples=2, max_total_tokens=4)
    relayed = progress.record(_chunk(0, [1, 2, 3, 4]))
    assert [(c.sample_index, c.finish_reason) for c in relayed] == [(0, COST), (1, COST)]


def test_without_a_ceiling_samples_finish_on_their_own():
    progress = SampleProgress(num_samples=2)
    progress.record(_chunk(0, [1] * 100, LENGTH))
    assert progress.unfinished() == [1] and progress.tokens_left() is None


def test_a_resumed_sample_keeps_its_seed_deadline_and_budgets_and_gets_what_is_left_of_the_ceiling():
    progress = SampleProgress(num_samples=3, max_total_tokens=50)
    progress.record(_chunk(2, [9, 8, 7]))
    progress.record(_chunk(0, [1, 2]))
    sampling = inference_pb2.SamplingParams(temperature=0.5, seed=40, n=3, stop=["x"])
    budget = worker_pb2.DecodeBudget(max_tokens=20, max_thinking_tokens=6, deadline=1234.5,
                                     max_total_tokens=50, starts_in_thinking=True)

    request = resumed_request("fresh-id", [100, 101], sampling, budget, progress, sample_index=2)

    assert request.request_id == "fresh-id" and request.colocated
    assert list(request.prompt_token_ids) == [100, 101]
    assert list(request.output_token_ids) == [9, 8, 7]
    assert request.sampling.n == 1 and request.sampling.seed == 42
    assert list(request.sampling.stop) == ["x"] and request.sampling.temperature == 0.5
    assert request.budget.max_total_tokens == 45
    assert (request.budget.max_tokens, request.budget.max_thinking_tokens, request.budget.deadline,
            request.budget.starts_in_thinking) == (20, 6, 1234.5, True)
    assert sampling.seed == 40 and budget.max_total_tokens == 50, "the plan's messages are unchanged"


def test_an_unseeded_sample_resumes_unseeded():
    request = resumed_request("id", [1], inference_pb2.SamplingParams(temperature=1.0),
                              worker_pb2.DecodeBudget(max_tokens=5), SampleProgress(1), 0)
    assert not request.sampling.HasField("seed") and request.budget.max_total_tokens == 0
