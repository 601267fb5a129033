"""The OpenAI-compatible HTTP API driven by the official openai client and by raw HTTP."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from tandem.api.v1 import inference_pb2
from tests.router_api.conftest import API_KEY, LIMITED_KEY, NUM_THINKING_TOKENS, sample_tokens


def client_for(front_doors, api_key: str = API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{front_doors.http_url}/v1", api_key=api_key, max_retries=0)


async def test_models_list_returns_the_service_models(front_doors):
    async with client_for(front_doors) as client:
        models = await client.models.list()
        large = await client.models.retrieve("large")
    assert [m.id for m in models.data] == ["small", "large"]
    assert large.id == "large" and large.model_extra["supports_thinking"] is True


async def test_completion_returns_text_usage_and_finish_reason(front_doors):
    async with client_for(front_doors) as client:
        completion = await client.completions.create(model="small", prompt="two words", max_tokens=3)
    assert completion.choices[0].text == "".join(sample_tokens(0, 3))
    assert completion.choices[0].finish_reason == "length"
    assert completion.object == "text_completion" and completion.model == "small"
    assert completion.id.startswith("cmpl-req-")
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens,
            completion.usage.total_tokens) == (2, 3, 5)


async def test_chat_sends_messages_and_tandem_extensions_to_the_service(front_doors):
    async with client_for(front_doors) as client:
        chat = await client.chat.completions.create(
            model="large", messages=[{"role": "developer", "content": "be brief"},
                                     {"role": "user", "content": "hello there"}],
            max_completion_tokens=5, temperature=0.7, top_p=0.9, seed=42, stop=["\n", "END"],
            extra_body={"thinking": True, "max_thinking_tokens": 64, "deadline_seconds": 2.5,
                        "max_cost": 0.25, "top_k": 20})
    request = front_doors.service.calls[-1].request
    assert [(m.role, m.content) for m in request.chat.messages] == [("system", "be brief"),
                                                                    ("user", "hello there")]
    assert request.budget.max_tokens == 5 and request.budget.max_thinking_tokens == 64
    assert request.budget.thinking and request.budget.deadline_seconds == 2.5
    assert request.budget.max_cost == 0.25
    assert request.sampling.temperature == pytest.approx(0.7) and request.sampling.top_p == pytest.approx(0.9)
    assert request.sampling.seed == 42 and list(request.sampling.stop) == ["\n", "END"]
    assert request.sampling.top_k == 20
    pieces = sample_tokens(0, 5)
    message = chat.choices[0].message
    assert message.content == "".join(pieces[NUM_THINKING_TOKENS:])
    assert message.model_extra["reasoning_content"] == "".join(pieces[:NUM_THINKING_TOKENS])
    assert chat.usage.completion_tokens_details.reasoning_tokens == NUM_THINKING_TOKENS
    assert chat.object == "chat.completion" and chat.model_extra["routing"]["estimator"] == "fake"


async def test_streaming_chat_matches_the_non_streaming_answer_and_ends_with_usage(front_doors):
    async with client_for(front_doors) as client:
        stream = await client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
            stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "".join(sample_tokens(0, 4))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


async def test_streaming_completion_yields_text_pieces_in_order(front_doors):
    async with client_for(front_doors) as client:
        stream = await client.completions.create(model="small", prompt="p", max_tokens=3, stream=True)
        texts = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    assert "".join(texts) == "".join(sample_tokens(0, 3))


async def test_n_parallel_choices_are_returned_by_index(front_doors):
    async with client_for(front_doors) as client:
        chat = await client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=2, n=3)
    assert [c.index for c in chat.choices] == [0, 1, 2]
    assert [c.message.content for c in chat.choices] == ["".join(sample_tokens(i, 2)) for i in range(3)]
    assert chat.usage.completion_tokens == 6
    assert front_doors.service.calls[-1].request.sampling.n == 3


async def test_chat_and_completion_logprobs_have_openai_shapes(front_doors):
    async with client_for(front_doors) as client:
        chat = await client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
            logprobs=True, top_logprobs=3)
        completion = await client.completions.create(model="small", prompt="p", max_tokens=2, logprobs=2)
    content = chat.choices[0].logprobs.content
    assert [e.token for e in content] == sample_tokens(0, 2)
    assert [e.logprob for e in content] == [-0.5, -1.0]
    assert [t.token for t in content[0].top_logprobs] == ["alt0", "alt1", "alt2"]
    assert content[0].bytes == list(sample_tokens(0, 1)[0].encode())
    logprobs = completion.choices[0].logprobs
    assert logprobs.tokens == sample_tokens(0, 2) and logprobs.token_logprobs == [-0.5, -1.0]
    assert logprobs.top_logprobs[0] == {"alt0": -1.0, "alt1": -2.0}
    assert logprobs.text_offset == [0, len(sample_tokens(0, 1)[0])]


async def test_bad_api_key_is_401_and_anonymous_is_refused(front_doors):
    async with client_for(front_doors, api_key="sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError) as excinfo:
            await client.models.list()
    assert excinfo.value.status_code == 401
    assert excinfo.value.body["type"] == "authentication_error"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{front_doors.http_url}/v1/models") as response:
            assert response.status == 401


async def test_unknown_model_from_the_service_is_404(front_doors):
    async with client_for(front_doors) as client:
        with pytest.raises(openai.NotFoundError) as excinfo:
            await client.chat.completions.create(model="gigantic", messages=[{"role": "user", "content": "x"}])
    assert excinfo.value.body["param"] == "model"


async def test_malformed_json_is_400_naming_the_body(front_doors):
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as session:
        async with session.post(f"{front_doors.http_url}/v1/chat/completions", data=b'{"model": "small",') as resp:
            body = await resp.json()
    assert resp.status == 400
    assert body["error"]["param"] == "body" and "malformed JSON" in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("extra, param", [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_thinking_tokens": -5}, "max_thinking_tokens"),
    ({"deadline_seconds": 0}, "deadline_seconds"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"stop": [1, 2]}, "stop"),
    ({"frobnicate": True}, "frobnicate"),
])
async def test_out_of_range_parameters_are_400_naming_the_parameter(front_doors, extra, param):
    body = {"model": "small", "messages": [{"role": "user", "content": "hi"}], **extra}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as session:
        async with session.post(f"{front_doors.http_url}/v1/chat/completions", json=body) as resp:
            error = (await resp.json())["error"]
    assert resp.status == 400
    assert error["param"] == param and error["message"].startswith(param)
    assert front_doors.service.calls == []


async def test_quota_refusal_is_429_with_retry_after(front_doors):
    async with client_for(front_doors, api_key=LIMITED_KEY) as client:
        await client.completions.create(model="small", prompt="hi", max_tokens=20)
        with pytest.raises(openai.RateLimitError) as excinfo:
            await client.completions.create(model="small", prompt="hi", max_tokens=20)
    # The bucket refills at 1 token/s and lacks 12 of the 21 tokens the request needs.
    assert excinfo.value.response.headers["Retry-After"] == "12"
    assert excinfo.value.body["type"] == "rate_limit_error"
    text = front_doors.metrics.exposition()[0].decode()
    assert 'tandem_requests_total{model="small",outcome="rejected_quota"} 1.0' in text
    assert 'tandem_requests_total{model="small",outcome="ok"} 1.0' in text


async def test_error_mid_stream_reaches_the_client(front_doors):
    async with client_for(front_doors) as client:
        stream = await client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "FAIL_MIDSTREAM"}], stream=True)
        with pytest.raises(openai.APIError, match="decode worker lost"):
            async for _ in stream:
                pass


async def test_error_before_the_stream_keeps_its_status(front_doors):
    async with client_for(front_doors) as client:
        with pytest.raises(openai.InternalServerError) as excinfo:
            await client.chat.completions.create(
                model="small", messages=[{"role": "user", "content": "FAIL_UNAVAILABLE"}], stream=True)
    assert excinfo.value.status_code == 503


async def test_client_disconnect_mid_stream_closes_the_service_stream(front_doors):
    body = {"model": "small", "prompt": "SLOW", "max_tokens": 1000, "stream": True}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as session:
        response = await session.post(f"{front_doors.http_url}/v1/completions", json=body)
        first = await response.content.readline()
        assert first.startswith(b"data: ")
        response.close()
    call = front_doors.service.calls[-1]
    await asyncio.wait_for(call.closed.wait(), timeout=60)
    assert call.num_sent < 1000


async def test_health_readiness_and_metrics_endpoints(front_doors):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{front_doors.http_url}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{front_doors.http_url}/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ready"
        async with session.get(f"{front_doors.http_url}/metrics") as resp:
            assert resp.status == 200 and "tandem_requests_total" in await resp.text()
        async with session.get(f"{front_doors.http_url}/v1/nothing-here") as resp:
            assert resp.status == 404 and "error" in await resp.json()


async def test_trace_context_from_http_headers_reaches_the_service(front_doors):
    from opentelemetry import trace

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"Authorization": f"Bearer {API_KEY}", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    body = {"model": "small", "prompt": "p", "max_tokens": 1}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{front_doors.http_url}/v1/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()
    span_context = trace.get_current_span(front_doors.service.calls[-1].trace_context).get_span_context()
    assert format(span_context.trace_id, "032x") == trace_id


def test_sse_chunks_are_valid_json_lines():
    # The renderer never emits NaN/Infinity (invalid JSON) for impossible tokens.
    from router.openai_render import OpenAIRenderer
    from router.openai_schema import Endpoint, parse_request

    parsed = parse_request(Endpoint.CHAT, {"messages": [{"role": "user", "content": "x"}],
                                           "logprobs": True, "top_logprobs": 1})
    renderer = OpenAIRenderer(parsed, created=0)
    response = inference_pb2.GenerateResponse(request_id="r", text="a", token_ids=[1])
    response.logprobs.add(token_id=1, token="a", logprob=float("-inf"),
                          top=[inference_pb2.TopLogprob(token_id=2, token="b", logprob=float("-inf"))])
    chunk = renderer.add(response)
    decoded = json.loads(json.dumps(chunk, allow_nan=False))
    assert decoded["choices"][0]["logprobs"]["content"][0]["logprob"] == -9999.0
