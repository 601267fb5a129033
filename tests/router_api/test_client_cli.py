"""`tandem generate` and `tandem chat` against a real gRPC front door with the fake service."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from router.auth import Authenticator, Tenant
from router.grpc_api import build_grpc_server
from tandem import cli
from tests.router_api.conftest import API_KEY, NUM_THINKING_TOKENS, sample_tokens


@pytest.fixture
async def router(fake_service):
    server = build_grpc_server(fake_service, Authenticator({API_KEY: Tenant("acme")}), host="127.0.0.1", port=0)
    await server.start()
    yield f"127.0.0.1:{server.port}"
    await server.stop(0)


async def run_cli(argv: list[str]) -> int:
    # The CLI is synchronous (blocking gRPC): run it off the loop that serves the router.
    return await asyncio.to_thread(cli.main, argv)


async def test_generate_streams_text_and_prints_timings_and_usage(router, fake_service, capsys):
    code = await run_cli(["generate", "--router", router, "--api-key", API_KEY, "--model", "large",
                          "--max-tokens", "4", "--temperature", "0", "--seed", "7", "--thinking",
                          "--max-thinking-tokens", "16", "why is the sky blue"])
    out, err = capsys.readouterr()
    assert code == 0
    pieces = sample_tokens(0, 4)
    assert out == "".join(pieces[NUM_THINKING_TOKENS:])
    assert "".join(pieces[:NUM_THINKING_TOKENS]) in err
    assert "ttft" in err and "itl mean" in err and "completion 4 (thinking 2)" in err
    request = fake_service.calls[-1].request
    assert request.prompt == "why is the sky blue" and request.model == "large"
    assert request.sampling.HasField("temperature") and request.sampling.temperature == 0
    assert request.sampling.seed == 7 and request.budget.max_thinking_tokens == 16 and request.budget.thinking


async def test_generate_json_output(router, capsys):
    code = await run_cli(["generate", "--router", router, "--api-key", API_KEY, "--json", "--n", "2",
                          "--max-tokens", "3", "hi"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [s["text"] for s in result["samples"]] == ["".join(sample_tokens(i, 3)) for i in range(2)]
    assert result["usage"]["completion_tokens"] == 6 and result["model"] == "small"
    assert result["samples"][0]["finish_reason"] == "length" and result["ttft_s"] > 0


async def test_generate_reports_errors_and_fails(router, capsys):
    code = await run_cli(["generate", "--router", router, "--api-key", "sk-wrong", "hi"])
    assert code == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


async def test_chat_keeps_the_history(router, fake_service, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/reset\nagain\nand more\n"))
    code = await run_cli(["chat", "--router", router, "--api-key", API_KEY, "--system", "be kind",
                          "--max-tokens", "2"])
    assert code == 0
    answer = "".join(sample_tokens(0, 2))
    conversations = [[(m.role, m.content) for m in call.request.chat.messages] for call in fake_service.calls]
    assert conversations == [
        [("system", "be kind"), ("user", "hello")],
        [("system", "be kind"), ("user", "again")],
        [("system", "be kind"), ("user", "again"), ("assistant", answer), ("user", "and more")],
    ]
    assert capsys.readouterr().out.count(answer) == 3
