"""Reservation glue, block runs and the transfer config."""

from __future__ import annotations

import pytest
import torch

from tandem.kv.grants import GrantTable
from tandem.kv.reservation import (check_reservation, layout_from_proto, make_reservation, parse_address,
                                   split_runs)
from tandem.kv.transport import KVTransferConfig
from tandem.kv.ucx_runtime import CacheRegions
from tandem.kv.wire import WireLayout

LAYOUT = WireLayout(num_layers=2, block_size=4, num_kv_heads=1, head_dim=2, dtype_name="float16")


def test_split_runs_merges_only_where_both_sides_step_by_one():
    assert split_runs([4, 5, 6, 9, 10, 2], [10, 11, 12, 13, 14, 3]) == [(4, 10, 3), (9, 13, 2), (2, 3, 1)]
    assert split_runs([1, 2, 3], [7, 9, 10]) == [(1, 7, 1), (2, 9, 2)]
    assert split_runs([], []) == []
    with pytest.raises(ValueError, match="pair"):
        split_runs([1, 2], [3])


def test_reservation_round_trip_and_checks():
    grant = GrantTable(2, 32).register("req", [3, 4, 5], 1, 1234.5)
    reservation = make_reservation(grant, "10.0.0.7:4242", LAYOUT, "decode-0")
    assert list(reservation.block_ids) == [3, 4, 5] and reservation.token == grant.token
    assert layout_from_proto(reservation.layout) == LAYOUT
    check_reservation(reservation, LAYOUT)
    with pytest.raises(ValueError, match="layout mismatch"):
        check_reservation(reservation, WireLayout(2, 4, 1, 2, "float32"))
    reservation.token = b"short"
    with pytest.raises(ValueError, match="token"):
        check_reservation(reservation, LAYOUT)


@pytest.mark.parametrize("address", ["nohost", "host:", ":80", "host:99999", "host:port"])
def test_bad_addresses_are_refused(address):
    with pytest.raises(ValueError, match="host:port"):
        parse_address(address)


def test_addresses_parse():
    assert parse_address("127.0.0.1:13337") == ("127.0.0.1", 13337)
    assert parse_address("[::1]:80") == ("::1", 80)


def test_cache_regions_are_zero_copy_views_of_block_runs():
    cache = torch.zeros(2, 8, 2, 4, 1, 2, dtype=torch.float16)
    view = CacheRegions(cache).run(1, 3, 2)
    assert view.nbytes == 2 * LAYOUT.bytes_per_block
    view[:] = 0xFF
    touched = (cache != 0).flatten(2).any(dim=2)  # [layers, blocks]
    assert touched.nonzero().tolist() == [[1, 3], [1, 4]]
    with pytest.raises(ValueError, match="contiguous"):
        CacheRegions(cache.transpose(0, 1))


@pytest.mark.parametrize("field, value", [("connect_timeout_s", 0), ("transfer_timeout_s", -1),
                                          ("max_inflight_messages", 0), ("sweep_interval_s", 0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        KVTransferConfig(**{field: value})


def test_config_normalizes_ucx_option_names():
    config = KVTransferConfig(ucx_options={"UCX_TLS": "tcp", "RNDV_THRESH": "8192"})
    assert config.normalized_ucx_options() == {"TLS": "tcp", "RNDV_THRESH": "8192"}
    with pytest.raises(ValueError, match="ucx_options"):
        KVTransferConfig(ucx_options={"TLS": 1})
