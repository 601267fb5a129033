"""Prefix caching per design, saturated prefill pools with shared prefixes, decode timings, ties."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tandem import cli
from tandem.sim.config import AutoscaleMode, Design, SimConfig
from tandem.sim.perf_model import DecodeTiming
from tandem.sim.pools import perf_for
from tandem.sim.simulate import simulate
from tandem.sim.traces import spread_ties

from .conftest import make_trace


def _shared_prefix_burst(num: int = 24, spacing_s: float = 0.2, num_prompt: int = 3000):
    # Every prompt starts with the same 5 blocks (2,560 tokens); its last block is its own.
    hashes = [[1, 2, 3, 4, 5] + [100 * i + k for k in range(-(-num_prompt // 512) - 5)]
              for i in range(1, num + 1)]
    return make_trace([spacing_s * i for i in range(num)], [num_prompt] * num, [4] * num, hashes)


@pytest.mark.parametrize("design, expect_cache", [(Design.SPLITWISE, False), (Design.COLOCATED, False),
                                                  (Design.TANDEM, True)])
def test_prefix_caching_is_on_for_tandem_only_by_default(perf_csv, design, expect_cache):
    config = SimConfig(design=design, num_machines=2, num_prefill=1, num_decode=1, perf_csv=perf_csv)
    assert config.prefix_caching is expect_cache
    routing = simulate(config, _shared_prefix_burst())[1]["routing"]
    assert (routing["cached_prompt_tokens"] > 0) is expect_cache
    assert (routing["prefix_locality_choices"] > 0) is expect_cache


def test_saturated_prefill_pool_with_shared_prefixes_keeps_its_books(perf_csv):
    # The router believes a prefix is cached on the decode machine before the machine has it
    # (its first prompt is still queued); prompts diverted from the saturated prefill pool must be
    # queued with the tokens the machine really computes, or its queue gauge, which the
    # autoscaler scrapes, goes wrong.
    config = SimConfig(design=Design.TANDEM, num_prefill=1, num_decode=1,
                       autoscale=AutoscaleMode.PHASE, autoscale_interval_s=0.2, perf_csv=perf_csv)
    result, summary = simulate(config, _shared_prefix_burst(40, spacing_s=0.01, num_prompt=4000))
    assert summary["routing"]["prefilled_on_decode_machine"] > 0
    assert all(finish > 0 for finish in result.requests.finish_s)
    assert summary["routing"]["cached_prompt_tokens"] > 0


@pytest.mark.parametrize("timing", list(DecodeTiming))
def test_one_request_matches_the_model_under_each_decode_timing(perf_csv, timing):
    config = SimConfig(design=Design.COLOCATED, num_machines=1, gpu="H100", decode_timing=timing,
                       perf_csv=perf_csv)
    result, summary = simulate(config, make_trace([0.0], [700], [40]))
    perf = perf_for(config, "H100")
    expected = perf.prefill_time(700) + sum(perf.decode_time(1, 701 + k) for k in range(39))
    assert result.requests.finish_s[0] == pytest.approx(expected, rel=1e-12)


def test_splitwise_sim_timing_makes_decode_batching_nearly_free(perf_csv):
    measured = perf_for(SimConfig(perf_csv=perf_csv), "A100")
    flat = perf_for(SimConfig(perf_csv=perf_csv, decode_timing="splitwise-sim"), "A100")
    # The measured batch sweep: 64 sequences take far longer than one; read as splitwise-sim does,
    # they take about as long.
    assert measured.decode_time(64, 64 * 512) > 1.4 * measured.decode_time(1, 512)
    assert flat.decode_time(64, 64 * 512) < 1.05 * flat.decode_time(1, 512)


def test_spread_ties_spreads_each_group_over_its_interval():
    trace = make_trace([0.0, 0.0, 0.0, 0.0, 3.0, 3.0, 9.0], [10] * 7, [2] * 7)
    spread = spread_ties(trace)
    assert spread.arrival_s.tolist() == pytest.approx([0.0, 0.75, 1.5, 2.25, 3.0, 6.0, 9.0])
    assert np.array_equal(spread.prompt_tokens, trace.prompt_tokens)


def test_cli_runs_the_mooncake_trace_with_prefix_routing(perf_csv, mooncake_trace_path, capsys):
    code = cli.main(["simulate", "--trace", str(mooncake_trace_path), "--format", "mooncake",
                     "--spread-ties", "--duration", "60", "--design", "tandem", "--prefill", "2",
                     "--decode", "3", "--json", "--perf-csv", str(perf_csv)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_requests"] > 100
    assert summary["routing"]["cached_prompt_tokens"] > 0
    assert summary["routing"]["prefix_locality_choices"] > 0
