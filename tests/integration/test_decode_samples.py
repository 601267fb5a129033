"""A decode worker's parallel samples and its prompt information, over gRPC, in this process.

The n samples of a request are forks of one prefilled sequence: they share the prompt's KV, and
each computes only what it makes itself. The prompt's final hidden state leaves the worker only
when the request asks for it.
"""

from __future__ import annotations

import pytest

from tandem.api.v1 import inference_pb2, worker_pb2
from tests.integration.helpers import decode_stub, used_blocks, wait_for_blocks
from tests.integration.in_process_decode import in_process_decode_worker

PROMPT = [(11 * position) % 300 + 3 for position in range(40)]  # 2 full blocks and 8 tokens


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    with in_process_decode_worker(tiny_model_dir) as running:
        yield running


@pytest.fixture
def stub(worker):
    return decode_stub(worker.address)


def _colocated(request_id: str, num_samples: int, max_tokens: int, **fields) -> worker_pb2.DecodeRequest:
    return worker_pb2.DecodeRequest(
        request_id=request_id, prompt_token_ids=PROMPT, colocated=True,
        sampling=inference_pb2.SamplingParams(n=num_samples, temperature=0.8, seed=5),
        budget=worker_pb2.DecodeBudget(max_tokens=max_tokens), **fields)


def test_colocated_samples_compute_the_prompt_once(worker, stub, monkeypatch):
    baseline = wait_for_blocks(stub, used_blocks(stub))
    runner = worker.service.engine.runner
    computed: list[int] = []
    execute = runner.execute

    def counting_execute(batch, *args, **kwargs):
        computed.append(batch.num_tokens)
        return execute(batch, *args, **kwargs)

    monkeypatch.setattr(runner, "execute", counting_execute)
    num_samples = 3
    chunks = list(stub.Decode(_colocated("forked", num_samples, max_tokens=6), timeout=60))
    monkeypatch.undo()
    generated = sum(len(c.token_ids) for c in chunks)
    finished = [c.sample_index for c in chunks if c.finish_reason]
    assert sorted(finished) == list(range(num_samples))
    # The prompt once, one token per later sample (each draws its own first token from the
    # prompt's last position), then each generated token but the last of every sample.
    assert sum(computed) == len(PROMPT) + (num_samples - 1) + (generated - num_samples)
    assert wait_for_blocks(stub, baseline) == baseline


def test_the_hidden_state_is_shipped_only_when_asked_for(worker, stub):
    plain = list(stub.Decode(_colocated("no-hidden", 1, max_tokens=2), timeout=60))
    assert all(not chunk.hidden_state for chunk in plain)
    asked = list(stub.Decode(_colocated("hidden", 1, max_tokens=2, return_hidden_state=True),
                             timeout=60))
    hidden_size = worker.service.engine.model_config.hidden_size
    assert len(asked[0].hidden_state) == hidden_size
    assert all(not chunk.hidden_state for chunk in asked[1:])
