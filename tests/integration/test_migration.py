"""Mid-stream migration: a decode worker killed with SIGKILL while it streams, the request goes on.

The first test checks the decode worker's side of a resume (output_token_ids) directly. Every other
test streams a request through the router, waits until the client has received some tokens, kills
the decode worker that runs the request (kill -9), and compares the joined output with an
uninterrupted run of the same request on the same cluster. The cluster has enough decode workers
for every kill of the module and a survivor; the last test starts a second router with
`--migration-limit 0` over the surviving workers.
"""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.engine.sampling_params import SamplingParams
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tandem.serving.process_group import start_child, stop_children, wait_ready
from tests.integration.helpers import decode_stub, greedy_request, router_stub

pytestmark = pytest.mark.slow
THINKING = inference_pb2.TOKEN_SECTION_THINKING
# Kills in this module: greedy 1, seeded 1, thinking 2, n>1 1, migration limit 0 1; one survives.
NUM_DECODE = 7
PROMPT = list(range(40, 90))


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    config = LocalClusterConfig(model=str(tiny_model_dir), num_prefill=1, num_decode=NUM_DECODE,
                                num_blocks=512)
    with LocalCluster(config, tmp_path_factory.mktemp("migration")) as running:
        yield running


def _stream(address: str, request) -> list[inference_pb2.GenerateResponse]:
    return list(router_stub(address).Generate(request, timeout=300))


def _stream_with_kill(cluster, request, num_tokens_before_kill: int, address: str | None = None):
    """Streams a request, kills the decode worker running it after num_tokens_before_kill tokens
    have reached the client, and returns every response."""
    responses, num_received, killed = [], 0, None
    for response in router_stub(address or cluster.grpc_address).Generate(request, timeout=300):
        responses.append(response)
        num_received += len(response.token_ids)
        if killed is None and num_received >= num_tokens_before_kill:
            killed = _kill_busy_decode_worker(cluster)
    assert killed is not None, "the stream ended before the kill"
    return responses


def _kill_busy_decode_worker(cluster) -> str:
    alive = [child for child in cluster.decode if child.is_alive]
    assert len(alive) >= 2, "no decode worker left to migrate to: raise NUM_DECODE"
    for child in alive:
        load = decode_stub(cluster.worker_address(child)).GetLoad(worker_pb2.GetLoadRequest(), timeout=10)
        if load.num_running > 0:
            child.process.kill()
            child.process.wait()
            return child.name
    raise AssertionError("no decode worker runs the request: it finished before the kill")


def _router_counter(http_url: str, name: str, **labels) -> float:
    """The value of one counter sample in the router's /metrics (0 when absent)."""
    with urllib.request.urlopen(http_url.removesuffix("/v1") + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def _migrations(cluster) -> float:
    return _router_counter(cluster.http_url, "tandem_request_migrations_total")


def _by_sample(responses) -> dict[int, list[tuple[int, int]]]:
    """(token id, section) of each sample, in order."""
    samples: dict[int, list[tuple[int, int]]] = {}
    for response in responses:
        if response.HasField("usage"):
            continue
        samples.setdefault(response.sample_index, []).extend(
            (token_id, response.section) for token_id in response.token_ids)
    return samples


def _finish_reasons(responses) -> dict[int, int]:
    return {r.sample_index: r.finish_reason for r in responses if r.finish_reason}


def _chat(content: str, **budget) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        chat=inference_pb2.ChatInput(messages=[inference_pb2.ChatMessage(role="user", content=content)]),
        sampling=inference_pb2.SamplingParams(temperature=0.0), budget=inference_pb2.Budget(**budget))


def test_a_decode_worker_continues_after_given_output_tokens_and_refuses_bad_ones(cluster,
                                                                                reference_engine):
    expected = reference_engine.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=30))[0]
    decode = decode_stub(cluster.worker_address(next(c for c in cluster.decode if c.is_alive)))

    def resumed(request_id: str, output_token_ids, n: int = 1, colocated: bool = True):
        return worker_pb2.DecodeRequest(
            request_id=request_id, prompt_token_ids=PROMPT, colocated=colocated,
            output_token_ids=output_token_ids,
            sampling=inference_pb2.SamplingParams(temperature=0.0, n=n),
            budget=worker_pb2.DecodeBudget(max_tokens=30))

    chunks = list(decode.Decode(resumed("resumed", expected.token_ids[:12]), timeout=60))
    assert [t for c in chunks for t in c.token_ids] == expected.token_ids[12:]
    for bad in (resumed("two-samples", expected.token_ids[:3], n=2),
                resumed("not-colocated", expected.token_ids[:3], colocated=False),
                resumed("nothing-left", expected.token_ids[:30]),
                resumed("unknown-token", [10**6])):
        with pytest.raises(grpc.RpcError) as refused:
            list(decode.Decode(bad, timeout=60))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad.request_id
        assert "output_token_ids" in refused.value.details() or "max_tokens" in refused.value.details()


def test_greedy_stream_resumes_on_another_worker_as_if_nothing_happened(cluster):
    request = greedy_request(PROMPT, 400)
    expected = _stream(cluster.grpc_address, request)
    assert len(_by_sample(expected)[0]) > 100, "the uninterrupted run is too short to kill mid-way"
    migrations = _migrations(cluster)
    failed_cancels = _router_counter(cluster.http_url, "tandem_dropped_errors_total",
                                     component="router", kind="cancel_failed")

    joined = _stream_with_kill(cluster, request, num_tokens_before_kill=20)

    assert _by_sample(joined) == _by_sample(expected)
    assert _finish_reasons(joined) == _finish_reasons(expected)
    assert joined[-1].usage.completion_tokens == expected[-1].usage.completion_tokens
    assert _migrations(cluster) == migrations + 1
    # The router's Cancel to the dead worker cannot arrive: it is counted, not dropped silently.
    assert _router_counter(cluster.http_url, "tandem_dropped_errors_total", component="router",
                           kind="cancel_failed") > failed_cancels


def test_seeded_sampling_continues_with_the_same_draws(cluster):
    request = greedy_request(PROMPT, 300)
    request.sampling.temperature, request.sampling.seed = 0.8, 0
    expected = _stream(cluster.grpc_address, request)
    assert len(_by_sample(expected)[0]) > 100, "the uninterrupted run is too short to kill mid-way"
    migrations = _migrations(cluster)

    joined = _stream_with_kill(cluster, request, num_tokens_before_kill=20)

    assert _by_sample(joined) == _by_sample(expected)
    assert _finish_reasons(joined) == _finish_reasons(expected)
    assert _migrations(cluster) == migrations + 1


@pytest.mark.parametrize("num_tokens_before_kill", [8, 40], ids=["inside-thinking", "in-answer"])
def test_thinking_budget_and_sections_survive_a_migration(cluster, reference_engine,
                                                          num_tokens_before_kill):
    budget = 24
    request = _chat("Tell me a long story.", thinking=True,
                    max_thinking_tokens=budget, max_tokens=300)
    expected = _stream(cluster.grpc_address, request)
    tokens = _by_sample(expected)[0]
    assert len(tokens) > 100, "the uninterrupted run is too short to kill in its answer"
    migrations = _migrations(cluster)

    joined = _stream_with_kill(cluster, request, num_tokens_before_kill)

    joined_tokens = _by_sample(joined)[0]
    delimiter = reference_engine.tokenizer.think_end_token_ids[0]
    ids = [token_id for token_id, _ in joined_tokens]
    assert ids.index(delimiter) == budget, "the thinking budget was not carried over"
    assert all(section == THINKING for _, section in joined_tokens[:budget + 1])
    assert joined_tokens == tokens
    assert joined[-1].usage.thinking_tokens == expected[-1].usage.thinking_tokens
    assert _migrations(cluster) == migrations + 1


def test_each_of_n_samples_resumes_from_its_own_tokens(cluster):
    request = greedy_request(PROMPT, 200)
    request.sampling.temperature, request.sampling.seed, request.sampling.n = 0.8, 11, 3
    expected = _by_sample(_stream(cluster.grpc_address, request))
    assert sorted(expected) == [0, 1, 2]
    assert len({tuple(tokens) for tokens in expected.values()}) == 3, "the samples are alike"
    assert sum(len(tokens) for tokens in expected.values()) > 150
    migrations = _migrations(cluster)

    joined = _stream_with_kill(cluster, request, num_tokens_before_kill=30)

    assert _by_sample(joined) == expected
    assert _migrations(cluster) > migrations


def test_migration_limit_zero_fails_the_request_with_unavailable(cluster, tmp_path):
    alive = [child for child in cluster.decode if child.is_alive]
    args = ["router", "--model", str(cluster.model_dir), "--host", "127.0.0.1", "--grpc-port", "0",
            "--http-port", "0", "--discovery", "static", "--allow-anonymous",
            "--worker-token-file", str(cluster.worker_token_file),
            "--prefill-workers", ",".join(cluster.worker_address(c) for c in cluster.prefill),
            "--decode-workers", ",".join(cluster.worker_address(c) for c in alive),
            "--min-disaggregate-tokens", "0", "--migration-limit", "0"]
    router = start_child("router-no-migration", args, tmp_path, {})
    try:
        wait_ready([router], timeout_s=180)
        address = f"127.0.0.1:{router.ready['grpc_port']}"
        with pytest.raises(grpc.RpcError) as failed:
            _stream_with_kill(cluster, greedy_request(PROMPT, 400), 20, address=address)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "migration" in failed.value.details()
    finally:
        stop_children([router])
