"""Hostile input at both front doors: oversize prompts, bad request ids, made-up model names.

Each is refused with a clear error before the service behind the doors reads the request, and
none of them leaves a trace in the metrics beyond one count under a fixed label.
"""

from __future__ import annotations

import re
import secrets

import aiohttp
import grpc
import pytest

from router.request_plan import MAX_REQUEST_BYTES
from tandem.api.v1 import inference_pb2, inference_pb2_grpc
from tests.router_api.conftest import API_KEY, MODELS

BEARER = (("authorization", f"Bearer {API_KEY}"),)
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
TEN_MB_PROMPT = "All work and no play. " * (10_000_000 // 22)
SERVED = {m.id for m in MODELS}


async def _grpc_error(front_doors, request) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(front_doors.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            async for _ in stub.Generate(request, metadata=BEARER):
                pass
    return excinfo.value


async def _http(front_doors, path: str, body: dict | bytes) -> tuple[int, dict]:
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        kwargs = {"data": body, "headers": {"Content-Type": "application/json"}} \
            if isinstance(body, bytes) else {"json": body}
        async with session.post(f"{front_doors.http_url}{path}", **kwargs) as resp:
            return resp.status, await resp.json()


async def test_a_10mb_prompt_is_refused_by_size_over_grpc(front_doors):
    error = await _grpc_error(front_doors, inference_pb2.GenerateRequest(
        model="small", prompt=TEN_MB_PROMPT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("prompt")
    # The limit is named: the model's context and what it allows in characters.
    assert "4096 tokens" in error.details() and re.search(r"limit of \d+ characters", error.details())
    assert front_doors.service.calls == []


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"model": "small", "prompt": TEN_MB_PROMPT}, "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": TEN_MB_PROMPT}]}, "messages"),
])
async def test_a_10mb_prompt_is_refused_by_size_over_http(front_doors, path, body, param):
    status, reply = await _http(front_doors, path, body)
    assert status == 400
    assert reply["error"]["param"] == param
    assert re.search(r"limit of \d+ characters", reply["error"]["message"])
    assert front_doors.service.calls == []


async def test_an_http_body_over_the_hard_cap_is_413_naming_the_cap(front_doors):
    body = b'{"model": "small", "prompt": "' + b"x" * MAX_REQUEST_BYTES + b'"}'
    status, reply = await _http(front_doors, "/v1/completions", body)
    assert status == 413
    assert str(MAX_REQUEST_BYTES) in reply["error"]["message"]
    assert front_doors.service.calls == []


async def test_a_grpc_message_over_the_hard_cap_is_refused(front_doors):
    error = await _grpc_error(front_doors, inference_pb2.GenerateRequest(
        model="small", prompt="x" * (MAX_REQUEST_BYTES + 1)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(MAX_REQUEST_BYTES) in error.details()
    assert front_doors.service.calls == []


async def test_too_many_token_ids_are_refused_before_they_are_read(front_doors):
    error = await _grpc_error(front_doors, inference_pb2.GenerateRequest(
        model="small", tokens=inference_pb2.TokenInput(token_ids=[7] * 4097)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("tokens") and "context" in error.details()
    assert front_doors.service.calls == []


BAD_REQUEST_IDS = ["r" * 129, "line\nbreak", "tab\tid", "nul\x00id", "\x7f"]


@pytest.mark.parametrize("request_id", BAD_REQUEST_IDS)
async def test_a_bad_request_id_is_invalid_over_grpc(front_doors, request_id):
    error = await _grpc_error(front_doors, inference_pb2.GenerateRequest(
        model="small", prompt="hi", request_id=request_id))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("request_id")
    assert front_doors.service.calls == []


@pytest.mark.parametrize("request_id", BAD_REQUEST_IDS)
async def test_a_bad_request_id_is_400_over_http(front_doors, request_id):
    status, reply = await _http(front_doors, "/v1/completions",
                                {"model": "small", "prompt": "hi", "request_id": request_id})
    assert status == 400
    assert reply["error"]["param"] == "request_id"
    assert front_doors.service.calls == []


async def test_a_128_character_request_id_is_echoed_back(front_doors):
    request_id = "id é:" + "x" * 123
    async with grpc.aio.insecure_channel(front_doors.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        responses = [r async for r in stub.Generate(inference_pb2.GenerateRequest(
            model="small", prompt="hi", request_id=request_id), metadata=BEARER)]
    assert {r.request_id for r in responses} == {request_id}
    status, reply = await _http(front_doors, "/v1/completions",
                                {"model": "small", "prompt": "hi", "request_id": request_id})
    assert status == 200 and reply["id"] == f"cmpl-{request_id}"


def _request_series(text: str) -> list[dict[str, str]]:
    series = []
    for line in text.splitlines():
        if line.startswith("tandem_requests_total{"):
            labels = line[line.index("{") + 1:line.rindex("}")]
            series.append(dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)))
    return series


async def test_made_up_model_names_do_not_become_metric_labels(front_doors):
    names = [secrets.token_hex(8) for _ in range(5)] + ["m" * 5000]
    for name in names[:3]:
        error = await _grpc_error(front_doors, inference_pb2.GenerateRequest(model=name, prompt="hi"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    for name in names[3:]:
        status, _ = await _http(front_doors, "/v1/completions", {"model": name, "prompt": "hi"})
        assert status == 404
    status, _ = await _http(front_doors, "/v1/completions", {"model": "small", "prompt": "hi"})
    assert status == 200
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{front_doors.http_url}/metrics") as resp:
            text = await resp.text()
    series = _request_series(text)
    assert {s["model"] for s in series} <= SERVED | {"unknown", "auto"}
    assert not any(name in text for name in names)
    assert {"model": "unknown", "outcome": "not_found"} in series
    assert 'tandem_requests_total{model="unknown",outcome="not_found"} 6.0' in text
    assert 'tandem_requests_total{model="small",outcome="ok"} 1.0' in text
