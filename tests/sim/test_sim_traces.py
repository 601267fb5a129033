"""Trace loaders (Azure CSV, Mooncake JSONL), malformed files, and trace reshaping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tandem.sim.traces import TraceFormat, detect_format, load_trace, poisson, scale_rate, window

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.2224670,879,0
"""


def test_azure_csv_parses(tmp_path):
    path = tmp_path / "azure.csv"
    path.write_text(AZURE)
    trace = load_trace(path)
    assert detect_format(path) is TraceFormat.AZURE
    assert trace.arrival_s.tolist() == pytest.approx([0.0, 4.314579, 4.541876])
    assert trace.prompt_tokens.tolist() == [374, 396, 879]
    assert trace.output_tokens.tolist() == [44, 109, 1]  # a 0-token answer still has its first token
    assert trace.block_hashes is None


def test_mooncake_jsonl_parses_with_block_hashes(tmp_path):
    rows = [{"timestamp": 1500, "input_length": 1100, "output_length": 7, "hash_ids": [0, 1, 2]},
            {"timestamp": 0, "input_length": 600, "output_length": 3, "hash_ids": [0, 5]}]
    path = tmp_path / "mooncake.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    trace = load_trace(path, "mooncake")
    assert trace.arrival_s.tolist() == [0.0, 1.5]  # sorted by arrival, milliseconds to seconds
    assert trace.prompt_tokens.tolist() == [600, 1100]
    assert trace.block_hashes == [[0, 5], [0, 1, 2]]
    assert trace.block_size == 512


@pytest.mark.parametrize("text, fmt, message", [
    ("TIMESTAMP,Context,Generated\n2023-11-16 18:15:46,1,1\n", None, r":1: expected the header"),
    (AZURE + "2023-11-16 18:15:52.0,abc,3\n", None, r"azure.txt:5: malformed row"),
    (AZURE + "2023-11-16 18:15:52.0,12\n", None, r"azure.txt:5: expected 3 fields"),
    (AZURE + "not-a-date,12,3\n", None, r"azure.txt:5: malformed row"),
    (AZURE + "2023-11-16 18:15:52.0,0,3\n", None, r"azure.txt:5: prompt tokens must be >= 1"),
    ('{"timestamp": 0, "input_length": 5}\n', "mooncake", r"azure.txt:1: malformed Mooncake row"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 1}\n{oops\n', "mooncake",
     r"azure.txt:2: malformed Mooncake row"),
    ("hello\n", None, r"cannot tell the trace format"),
])
def test_malformed_files_are_rejected_with_their_line(tmp_path, text, fmt, message):
    path = tmp_path / "azure.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_trace(path, fmt)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="trace file not found"):
        load_trace(tmp_path / "nope.csv")


def test_rate_scaling_windows_and_poisson(tmp_path):
    path = tmp_path / "azure.csv"
    path.write_text(AZURE)
    trace = load_trace(path)
    fast = scale_rate(trace, 2.0)
    assert fast.arrival_s.tolist() == pytest.approx((trace.arrival_s / 2).tolist())
    part = window(trace, 4.0, 1.0)
    assert part.prompt_tokens.tolist() == [396, 879]
    assert part.arrival_s[0] == pytest.approx(0.314579)
    with pytest.raises(ValueError, match="no requests in the window"):
        window(trace, 100.0, 5.0)
    with pytest.raises(ValueError, match="rate scale"):
        scale_rate(trace, 0)
    synthetic = poisson(trace, 50.0, 20_000, seed=1)
    assert len(synthetic) == 20_000
    assert synthetic.duration_s == pytest.approx(20_000 / 50.0, rel=0.05)
    assert set(synthetic.prompt_tokens.tolist()) <= {374, 396, 879}
    assert np.array_equal(poisson(trace, 50.0, 100, seed=1).arrival_s, poisson(trace, 50.0, 100, 1).arrival_s)


def test_real_traces_load(azure_trace_path, mooncake_trace_path):
    azure = load_trace(azure_trace_path)
    assert len(azure) == 19_366 and azure.duration_s > 3000
    mooncake = load_trace(mooncake_trace_path)
    assert len(mooncake) == 12_031
    assert all(len(h) == -(-p // 512) for h, p in zip(mooncake.block_hashes[:500],
                                                       mooncake.prompt_tokens[:500]))
