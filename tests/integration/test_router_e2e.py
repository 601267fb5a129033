"""The router end to end on a real local cluster: both client APIs, errors, cancellation, traces."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import grpc
import pytest

from tandem.api.v1 import inference_pb2
from tandem.engine.sampling_params import SamplingParams
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tests.integration.helpers import (collect, decode_stub, greedy_request, router_stub,
                                       used_blocks, wait_for_blocks)

pytestmark = pytest.mark.slow
API_KEY = "sk-e2e-tenant"
CHAT = [{"role": "user", "content": "Tell me about prefill and decode."}]


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("traces")


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory, trace_dir):
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text(f"tenants:\n  - name: e2e\n    api_keys: [{API_KEY}]\n")
    config = LocalClusterConfig(model=str(tiny_model_dir), num_prefill=1, num_decode=2,
                                num_blocks=1024, router_args=["--api-keys", str(keys)],
                                env={"TANDEM_TRACE_FILE": str(trace_dir / "spans.jsonl")})
    with LocalCluster(config, tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(scope="module")
def openai_client(cluster):
    from openai import OpenAI

    return OpenAI(base_url=cluster.http_url, api_key=API_KEY, max_retries=0)


def _expected_chat(reference_engine, max_tokens: int) -> str:
    tokenizer = reference_engine.tokenizer
    prompt = tokenizer.encode(tokenizer.apply_chat_template(CHAT, add_generation_prompt=True),
                              add_special_tokens=False)
    return reference_engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens))[0]


def test_openai_chat_equals_the_engine_alone(openai_client, reference_engine):
    expected = _expected_chat(reference_engine, 12)
    reply = openai_client.chat.completions.create(model=openai_client.models.list().data[0].id,
                                                  messages=CHAT, max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.usage.prompt_tokens == len(expected.prompt_token_ids)


def test_openai_streaming_equals_non_streaming(openai_client, reference_engine):
    expected = _expected_chat(reference_engine, 12)
    model = openai_client.models.list().data[0].id
    stream = openai_client.chat.completions.create(model=model, messages=CHAT, max_tokens=12,
                                                   temperature=0, stream=True)
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(parts) == expected.text
    assert len([p for p in parts if p]) > 1, "the answer arrived in one piece: nothing streamed"


def test_openai_completions_and_models(openai_client, cluster):
    models = openai_client.models.list().data
    assert [m.id for m in models] == [cluster.model_dir.name]
    reply = openai_client.completions.create(model=models[0].id, prompt="Once upon a time",
                                             max_tokens=5, temperature=0)
    assert reply.usage.completion_tokens == 5 or reply.choices[0].finish_reason == "stop"


def test_grpc_stream_equals_the_engine_alone(cluster, reference_engine):
    prompt = list(range(10, 60))
    expected = reference_engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=9))[0]
    token_ids, text, usage, routing = collect(router_stub(cluster.grpc_address).Generate(
        greedy_request(prompt, 9), metadata=[("authorization", f"Bearer {API_KEY}")], timeout=60))
    assert token_ids == expected.token_ids
    assert text == expected.text
    assert usage.usage.completion_tokens == len(expected.token_ids)
    assert routing[0].model == cluster.model_dir.name


def test_bad_api_key_is_refused(cluster, openai_client):
    from openai import AuthenticationError, OpenAI

    bad = OpenAI(base_url=cluster.http_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(AuthenticationError):
        bad.chat.completions.create(model="x", messages=CHAT, max_tokens=2)
    with pytest.raises(grpc.RpcError) as refused:
        list(router_stub(cluster.grpc_address).Generate(
            greedy_request([5, 6, 7], 2), metadata=[("authorization", "Bearer sk-wrong")], timeout=60))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_unknown_model_is_not_found(openai_client, cluster):
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        openai_client.chat.completions.create(model="no-such-model", messages=CHAT, max_tokens=2)
    request = greedy_request([5, 6, 7], 2)
    request.model = "no-such-model"
    with pytest.raises(grpc.RpcError) as refused:
        list(router_stub(cluster.grpc_address).Generate(
            request, metadata=[("authorization", f"Bearer {API_KEY}")], timeout=60))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (json.dumps({"messages": CHAT, "temperature": -1}).encode(), "temperature"),
    (json.dumps({"messages": CHAT, "top_p": 1.5}).encode(), "top_p"),
    (json.dumps({"messages": CHAT, "max_tokens": -3}).encode(), "max_tokens"),
    (json.dumps({"messages": []}).encode(), "messages"),
])
def test_malformed_and_out_of_range_requests_get_400(cluster, body, param):
    request = urllib.request.Request(f"{cluster.http_url}/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {API_KEY}"})
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(request, timeout=60)
    assert failed.value.code == 400
    error = json.loads(failed.value.read())["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_prompt_over_the_context_is_invalid(cluster):
    with pytest.raises(grpc.RpcError) as refused:
        list(router_stub(cluster.grpc_address).Generate(
            greedy_request([5] * 5000, 4), metadata=[("authorization", f"Bearer {API_KEY}")], timeout=60))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context" in refused.value.details()


def test_client_cancellation_frees_every_block(cluster):
    decoders = [decode_stub(cluster.worker_address(c)) for c in cluster.decode]
    baselines = [wait_for_blocks(d, used_blocks(d)) for d in decoders]
    call = router_stub(cluster.grpc_address).Generate(
        greedy_request(list(range(10, 400)), 1500), metadata=[("authorization", f"Bearer {API_KEY}")],
        timeout=60)
    received = [next(call) for _ in range(3)]
    assert any(r.token_ids for r in received)
    assert sum(used_blocks(d) for d in decoders) > sum(baselines)
    call.cancel()
    assert [wait_for_blocks(d, b) for d, b in zip(decoders, baselines)] == baselines


def test_one_trace_spans_router_prefill_transfer_and_decode(cluster, trace_dir):
    collect(router_stub(cluster.grpc_address).Generate(
        greedy_request(list(range(20, 90)), 4, ), metadata=[("authorization", f"Bearer {API_KEY}")],
        timeout=60))
    deadline = time.monotonic() + 60
    wanted = {"prefill_worker.prefill", "kv_transfer", "decode_worker.decode", "router.prefill"}
    while True:
        spans = [json.loads(line) for path in trace_dir.glob("*.jsonl")
                 for line in path.read_text().splitlines() if line.strip()]
        by_trace: dict[str, set[str]] = {}
        for span in spans:
            by_trace.setdefault(span["trace_id"], set()).add(span["name"])
        if any(wanted <= names for names in by_trace.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert any(wanted <= names for names in by_trace.values()), by_trace
