"""A grant whose release callback fails: the failure is logged as a warning and counted."""

from __future__ import annotations

import logging

from tandem.kv.grants import GrantTable
from tandem.telemetry.metrics import default_metrics


def _released_failures() -> float:
    value = default_metrics().registry.get_sample_value(
        "tandem_dropped_errors_total", {"component": "kv_grants", "kind": "release_callback_failed"})
    return value or 0.0


def test_a_failing_release_callback_is_logged_and_counted(caplog):
    def broken_release(grant):
        raise RuntimeError(f"engine refused to free {grant.request_id}")

    table = GrantTable(num_layers=2, num_blocks=16, on_release=broken_release, clock=lambda: 100.0)
    before = _released_failures()
    table.register("cancelled", [1, 2], 0, 200.0)
    table.register("expired", [3], 0, 150.0)
    with caplog.at_level(logging.WARNING, logger="tandem.kv.grants"):
        table.cancel("cancelled")
        table.expire(now=160.0)
    assert _released_failures() == before + 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("'cancelled'" in m for m in warnings) and any("'expired'" in m for m in warnings)
    assert len(table) == 0
