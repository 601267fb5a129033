"""TextStream: text deltas with stop strings held back and cut, on a scripted detokenizer."""

from __future__ import annotations

import pytest

from tandem.engine import engine_config
from tandem.engine.engine_config import EngineConfig, resolve_num_blocks
from tandem.engine.text_stream import TextStream


class ScriptedDetokenizer:
    """Returns the next scripted delta for each token (the token id is ignored)."""

    def __init__(self, deltas: list[str]) -> None:
        self.deltas = iter(deltas)

    def add(self, token_id: int) -> str:
        return next(self.deltas)


def stream(deltas: list[str], stop: tuple[str, ...]) -> tuple[list[str], bool]:
    text_stream = TextStream(ScriptedDetokenizer(deltas), stop)
    pieces = []
    for token_id in range(len(deltas)):
        stopped = text_stream.add(token_id)
        pieces.append(text_stream.take(is_final=stopped or token_id == len(deltas) - 1))
        if stopped:
            return pieces, True
    return pieces, False


def test_text_passes_through_without_stop_strings():
    assert stream(["Hel", "lo", ""], ()) == (["Hel", "lo", ""], False)


def test_a_possible_stop_prefix_is_held_back_until_it_resolves():
    pieces, stopped = stream(["say a", "h", "oy", " there"], ("ahem",))
    assert pieces == ["say ", "", "ahoy", " there"] and not stopped


def test_a_stop_string_across_tokens_cuts_the_text_before_it():
    pieces, stopped = stream(["one END", "S", "TOP two"], ("ENDSTOP", "zzz"))
    assert stopped and "".join(pieces) == "one " and pieces[-1] == ""


def test_the_earliest_of_several_stop_strings_wins():
    pieces, stopped = stream(["a b c d"], ("c", "b"))
    assert stopped and pieces == ["a "]


def test_kv_cache_size_from_a_memory_fraction(monkeypatch):
    assert resolve_num_blocks(EngineConfig(num_blocks=7), bytes_per_block=10**6) == 7
    assert resolve_num_blocks(EngineConfig(kv_cache_memory_fraction=0.001), bytes_per_block=2**20) > 0
    monkeypatch.setattr(engine_config, "_free_memory_bytes", lambda device: 2**30)
    assert resolve_num_blocks(EngineConfig(kv_cache_memory_fraction=0.25), bytes_per_block=2**20) == 256
    with pytest.raises(ValueError, match="holds no KV block"):
        resolve_num_blocks(EngineConfig(kv_cache_memory_fraction=0.25), bytes_per_block=2**40)
