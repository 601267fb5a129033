"""OpenAI request bodies -> GenerateRequest: field mapping and the errors that name the field."""

from __future__ import annotations

import pytest

from router.errors import ErrorCode, RouterError
from router.openai_schema import Endpoint, parse_request
from tandem.api.v1 import inference_pb2

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def test_completion_fields_map_onto_the_request():
    parsed = parse_request(Endpoint.COMPLETIONS, {
        "model": "small", "prompt": [[1, 2, 3]], "max_tokens": 8, "logprobs": 2, "stop": "END", "n": 4,
        "selection": "majority", "selection_m": 3, "stop_token_ids": [7], "request_id": "abc", "user": "u1"})
    request = parsed.generate
    assert list(request.tokens.token_ids) == [1, 2, 3] and request.request_id == "abc"
    assert request.budget.max_tokens == 8 and list(request.sampling.stop) == ["END"]
    assert request.sampling.logprobs and request.sampling.top_logprobs == 2 and parsed.wants_logprobs
    assert request.sampling.selection == inference_pb2.SELECTION_RULE_MAJORITY_OF_FIRST_M
    assert request.sampling.selection_m == 3 and list(request.sampling.stop_token_ids) == [7]
    assert not request.sampling.HasField("temperature") and not parsed.is_stream


def test_chat_content_parts_and_generation_prompt():
    parsed = parse_request(Endpoint.CHAT, {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                     {"role": "assistant", "content": None}],
        "add_generation_prompt": False, "stream": True, "stream_options": {"include_usage": True}})
    chat = parsed.generate.chat
    assert [(m.role, m.content) for m in chat.messages] == [("user", "ab"), ("assistant", "")]
    assert chat.HasField("add_generation_prompt") and not chat.add_generation_prompt
    assert parsed.is_stream and parsed.include_usage


@pytest.mark.parametrize("endpoint, body, param", [
    (Endpoint.COMPLETIONS, {"prompt": ["a", "b"]}, "prompt"),
    (Endpoint.COMPLETIONS, {"prompt": ""}, "prompt"),
    (Endpoint.COMPLETIONS, {"prompt": "a", "echo": True}, "echo"),
    (Endpoint.COMPLETIONS, {"prompt": "a", "logprobs": 6}, "logprobs"),
    (Endpoint.COMPLETIONS, {"prompt": "a", "messages": []}, "messages"),
    (Endpoint.CHAT, {**CHAT, "max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens"),
    (Endpoint.CHAT, {**CHAT, "tools": [{"type": "function"}]}, "tools"),
    (Endpoint.CHAT, {**CHAT, "presence_penalty": 0.5}, "presence_penalty"),
    (Endpoint.CHAT, {**CHAT, "top_logprobs": 3}, "top_logprobs"),
    (Endpoint.CHAT, {**CHAT, "n": True}, "n"),
    (Endpoint.CHAT, {**CHAT, "seed": -1}, "seed"),
    (Endpoint.CHAT, {**CHAT, "selection": "best"}, "selection"),
    (Endpoint.CHAT, {**CHAT, "n": 2, "selection_m": 3}, "selection_m"),
    (Endpoint.CHAT, {**CHAT, "max_cost": float("nan")}, "max_cost"),
    (Endpoint.CHAT, {**CHAT, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    (Endpoint.CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]"),
    (Endpoint.CHAT, [1, 2], "body"),
])
def test_bad_fields_are_invalid_argument_naming_the_field(endpoint, body, param):
    with pytest.raises(RouterError) as excinfo:
        parse_request(endpoint, body)
    assert excinfo.value.code is ErrorCode.INVALID_ARGUMENT and excinfo.value.param == param
    assert excinfo.value.openai_body()["error"]["param"] == param


def test_an_absent_n_stays_unset_and_an_explicit_one_is_kept():
    # The openai client leaves n out unless the caller gives it: the policy then picks the samples.
    assert not parse_request(Endpoint.CHAT, dict(CHAT)).generate.sampling.HasField("n")
    explicit = parse_request(Endpoint.CHAT, {**CHAT, "n": 1}).generate.sampling
    assert explicit.HasField("n") and explicit.n == 1
    with_m = parse_request(Endpoint.CHAT, {**CHAT, "selection": "majority", "selection_m": 3})
    assert with_m.generate.sampling.selection_m == 3 and not with_m.generate.sampling.HasField("n")
