"""The simulator runs the very policy code of tandem.policy, and scales pools with it."""

from __future__ import annotations

import json

import pytest

from tandem import cli
from tandem.policy import autoscaling, worker_choice
from tandem.sim.config import AutoscaleMode, Design, SimConfig
from tandem.sim.engine import Simulator
from tandem.sim.simulate import simulate

from .conftest import make_trace


def _spy(monkeypatch, module, name, calls):
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def test_router_policy_is_tandem_policy_worker_choice(perf_csv, monkeypatch):
    calls: dict[str, int] = {}
    for name in ("choose_decode_worker", "choose_prefill_worker", "should_disaggregate"):
        _spy(monkeypatch, worker_choice, name, calls)
    config = SimConfig(design=Design.TANDEM, num_prefill=1, num_decode=2, perf_csv=perf_csv)
    trace = make_trace([0.0, 0.1, 0.2, 0.3], [4000, 100, 3000, 50], [3, 3, 3, 3])
    _, summary = simulate(config, trace)
    assert calls == {"choose_decode_worker": 4, "should_disaggregate": 4, "choose_prefill_worker": 2}
    # Conditional disaggregation: the two short prompts prefilled on their decode machine.
    assert summary["routing"] == {"disaggregated": 2, "prefilled_on_decode_machine": 2,
                                  "prefix_locality_choices": 0, "cached_prompt_tokens": 0}


def test_autoscaler_is_tandem_policy_autoscaling(perf_csv, monkeypatch):
    ticks: list[tuple[str, float]] = []
    real = autoscaling.PhaseAutoscaler.on_tick

    def on_tick(self, now, metrics):
        ticks.append((self.phase.value, now))
        return real(self, now, metrics)

    monkeypatch.setattr(autoscaling.PhaseAutoscaler, "on_tick", on_tick)
    config = SimConfig(design=Design.SPLITWISE, num_prefill=1, num_decode=1,
                       autoscale=AutoscaleMode.PHASE, autoscale_interval_s=10.0, perf_csv=perf_csv)
    sim = Simulator(config)
    assert sim.scaling.autoscalers == {}
    from tandem.sim.simulate import simulate as run_once

    result, _ = run_once(config, make_trace([0.0, 25.0], [500, 500], [3, 3]))
    assert {phase for phase, _ in ticks} == {"prefill", "decode"}
    assert [t for phase, t in ticks if phase == "prefill"] == [0.0, 10.0, 20.0]


NEVER_DIVERT = worker_choice.WorkerChoiceConfig(min_disaggregate_prompt_tokens=0,
                                               prefill_saturation_tokens=1e12)


def test_burst_of_long_prompts_scales_the_prefill_pool_after_provisioning(perf_csv):
    config = SimConfig(design=Design.SPLITWISE, num_prefill=1, num_decode=1,
                       autoscale=AutoscaleMode.PHASE, autoscale_interval_s=5.0,
                       provision_delay_s=30.0, max_machines=6, worker_choice=NEVER_DIVERT,
                       perf_csv=perf_csv)
    num = 300
    trace = make_trace([i * 0.05 for i in range(num)], [8000] * num, [2] * num)
    result, summary = simulate(config, trace)
    ups = [a for a in summary["scaling"]["actions"] if a["pool"] == "prefill" and a["to"] > a["from"]]
    assert ups and "prefill demand" in ups[0]["reason"]
    assert not [a for a in summary["scaling"]["actions"] if a["pool"] == "decode" and a["to"] > a["from"]]
    added = [m for m in result.machines if m.pool == "prefill" and m.started_s > 0]
    assert added and all(m.ready_s == pytest.approx(m.started_s + 30.0) for m in added)
    # Machines added serve prompts only once ready.
    for rid, index in enumerate(result.requests.prefill_machine):
        machine = result.machines[index]
        if machine in added:
            assert result.requests.first_token_s[rid] > machine.ready_s


def test_static_and_utilisation_modes(perf_csv):
    trace = make_trace([i * 0.05 for i in range(400)], [2000] * 400, [2] * 400)
    static = simulate(SimConfig(design=Design.SPLITWISE, num_prefill=1, num_decode=1,
                                worker_choice=NEVER_DIVERT, perf_csv=perf_csv), trace)[1]
    assert static["scaling"]["num_actions"] == 0
    util = simulate(SimConfig(design=Design.SPLITWISE, num_prefill=1, num_decode=1,
                              autoscale="utilization", autoscale_interval_s=5.0,
                              provision_delay_s=10.0, worker_choice=NEVER_DIVERT,
                              perf_csv=perf_csv), trace)[1]
    assert util["scaling"]["num_actions"] >= 1
    assert all("utilisation" in a["reason"] for a in util["scaling"]["actions"])


def test_cli_prints_json_and_writes_plots(perf_csv, tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    + "".join(f"2023-11-16 18:15:{i:02d}.0000000,{300 + 50 * i},{20 + i}\n"
                              for i in range(30)))
    out = tmp_path / "out"
    code = cli.main(["simulate", "--trace", str(path), "--design", "splitwise", "--prefill-gpu",
                     "H100", "--decode-gpu", "A100", "--prefill", "1", "--decode", "1",
                     "--rate-scale", "2", "--json", "--out", str(out), "--seed", "3",
                     "--perf-csv", str(perf_csv)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_requests"] == 30 and summary["design"] == "splitwise"
    assert summary["throughput"]["offered_requests_per_s"] == pytest.approx(2.0, rel=0.05)
    assert {p["gpu"] for p in summary["pools"]} == {"H100", "A100"}
    for name in ("summary.json", "requests.csv", "latency_cdf.png", "replicas.png",
                 "throughput_vs_cost.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "latency_cdf.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n")
    assert cli.main(["simulate", "--trace", str(path), "--json"]) == 2
    assert "bad.csv:2: malformed row" in capsys.readouterr().err
    assert cli.main(["simulate", "--trace", str(path), "--gpu-cost", "H100"]) == 2
