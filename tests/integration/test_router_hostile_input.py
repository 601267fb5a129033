"""Hostile input against a real router and workers: huge prompts, bad request ids, made-up models.

None of it may stall other clients or the router's health checks of its workers, and none of it
may grow the router's metrics beyond fixed label values.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import secrets
import threading
import urllib.error
import urllib.request

import grpc
import pytest

from router.request_plan import MAX_CHARS_PER_TOKEN
from tandem.api.v1 import inference_pb2
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tests.integration.helpers import collect, greedy_request, router_stub

pytestmark = pytest.mark.slow
TEN_MB_PROMPT = "All work and no play. " * (10_000_000 // 22)
NUM_HUGE = 40


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    config = LocalClusterConfig(model=str(tiny_model_dir), num_prefill=1, num_decode=1)
    with LocalCluster(config, tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(scope="module")
def max_context(cluster) -> int:
    models = router_stub(cluster.grpc_address).ListModels(inference_pb2.ListModelsRequest(), timeout=30)
    return models.models[0].max_context


def _post(cluster, path: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(f"{cluster.http_url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _grpc_error(cluster, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as excinfo:
        list(router_stub(cluster.grpc_address).Generate(request, timeout=120))
    return excinfo.value


def test_a_10mb_prompt_is_refused_by_size_naming_the_limit(cluster, max_context):
    error = _grpc_error(cluster, inference_pb2.GenerateRequest(prompt=TEN_MB_PROMPT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"context of {max_context} tokens" in error.details()
    assert re.search(r"limit of \d+ characters", error.details())
    status, reply = _post(cluster, "/chat/completions",
                          {"messages": [{"role": "user", "content": TEN_MB_PROMPT}]})
    assert status == 400 and reply["error"]["param"] == "messages"
    assert re.search(r"limit of \d+ characters", reply["error"]["message"])


def _readiness_watch(cluster, stop: threading.Event) -> list[int]:
    statuses = []
    base = cluster.http_url.removesuffix("/v1")
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=60) as reply:
                statuses.append(reply.status)
        except urllib.error.HTTPError as error:
            statuses.append(error.code)
        stop.wait(0.05)
    return statuses


def test_huge_prompts_do_not_stall_small_requests_or_worker_health(cluster, max_context):
    # Each passes the size check but not the context: the router tokenizes it, then refuses it.
    content = "x y " * (max_context * (MAX_CHARS_PER_TOKEN - 1) // 4)
    huge = inference_pb2.GenerateRequest(chat=inference_pb2.ChatInput(messages=[
        inference_pb2.ChatMessage(role="user", content=content)]))
    stub = router_stub(cluster.grpc_address)
    collect(stub.Generate(greedy_request([5, 6, 7], 2), timeout=60))  # warm: connections, caches
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(NUM_HUGE + 1) as pool:
        readiness = pool.submit(_readiness_watch, cluster, stop)
        refusals = [pool.submit(_grpc_error, cluster, huge) for _ in range(NUM_HUGE)]
        num_small_first = 0
        for index in range(5):
            token_ids, _, usage, _ = collect(stub.Generate(greedy_request([9, 10, 11 + index], 3),
                                                           timeout=120))
            assert usage.usage.completion_tokens == len(token_ids) > 0
            num_small_first += not all(f.done() for f in refusals)
        errors = [f.result() for f in refusals]
        stop.set()
        statuses = readiness.result()
    assert {e.code() for e in errors} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert all("context" in e.details() for e in errors)
    assert num_small_first == 5, f"only {num_small_first} small requests finished before the huge ones"
    assert statuses and set(statuses) == {200}, statuses


def test_a_bad_request_id_is_refused_at_both_doors(cluster):
    error = _grpc_error(cluster, inference_pb2.GenerateRequest(prompt="hi", request_id="r" * 129))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("request_id")
    status, reply = _post(cluster, "/completions", {"prompt": "hi", "request_id": "bad\nid"})
    assert status == 400 and reply["error"]["param"] == "request_id"


def test_made_up_model_names_do_not_become_metric_series(cluster):
    names = [secrets.token_hex(8) for _ in range(5)] + ["m" * 5000]
    for name in names:
        error = _grpc_error(cluster, inference_pb2.GenerateRequest(model=name, prompt="hi"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    base = cluster.http_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{base}/metrics", timeout=60) as reply:
        text = reply.read().decode()
    assert not any(name in text for name in names)
    labels = set(re.findall(r'tandem_requests_total\{[^}]*model="([^"]*)"', text))
    assert labels <= {cluster.model_dir.name, "auto", "unknown"}, labels
    assert re.search(r'tandem_requests_total\{model="unknown",outcome="not_found"\} ([0-9.]+)', text)
