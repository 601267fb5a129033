"""The repository's shape: generated stubs match the contracts, the CLI dispatches, protos are documented."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_committed_stubs_match_the_proto_files():
    result = subprocess.run([sys.executable, "-m", "tandem.api.codegen", "--check"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_drift_check_notices_a_changed_stub(tmp_path, monkeypatch):
    from tandem.api import codegen

    stub_copy = tmp_path / "v1"
    stub_copy.mkdir()
    for path in codegen.STUB_DIR.iterdir():
        if path.is_file():
            (stub_copy / path.name).write_text(path.read_text())
    (stub_copy / "worker_pb2.py").write_text("# edited by hand\n")
    monkeypatch.setattr(codegen, "STUB_DIR", stub_copy)
    assert codegen.main(["--check"]) == 1


def test_every_proto_field_and_message_is_documented():
    undocumented = []
    for proto in sorted((REPO_ROOT / "proto").rglob("*.proto")):
        lines = proto.read_text().splitlines()
        for number, line in enumerate(lines):
            stripped = line.strip()
            if not re.match(r"^(optional |repeated )?[\w.]+ \w+ = \d+;", stripped):
                continue
            previous = lines[number - 1].strip()
            if not previous.startswith("//") and not _is_self_explaining(stripped):
                undocumented.append(f"{proto.name}:{number + 1}: {stripped}")
    assert not undocumented, "fields without a comment:\n" + "\n".join(undocumented)


def _is_self_explaining(field_line: str) -> bool:
    # Ids, names and echo fields whose meaning the message comment already gives.
    name = field_line.split("=")[0].split()[-1]
    return name in {"request_id", "role", "content", "token_id", "token", "logprob", "messages",
                    "models", "worker_id", "model", "layout", "sampling", "budget", "prompt",
                    "chat", "tokens", "token_ids", "id", "num_layers", "block_size", "num_kv_heads",
                    "head_dim", "prompt_token_ids", "top", "logprobs", "sample_index"}


def test_cli_lists_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "tandem.cli", "--help"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0
    for name in ("serve", "prefill", "decode", "router", "simulate", "difficulty", "operator"):
        assert name in result.stdout


def test_cli_rejects_an_unknown_command():
    result = subprocess.run([sys.executable, "-m", "tandem.cli", "frobnicate"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr


def test_every_cli_module_exists():
    import importlib.util

    from tandem.cli import SUBCOMMANDS

    missing = [module for module, _ in SUBCOMMANDS.values() if importlib.util.find_spec(module) is None]
    assert not missing
