"""Grant table: one-time tokens, arrival bookkeeping, commit, claim, cancel and lease expiry."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tandem.kv.grants import GrantRefused, GrantState, GrantTable
from tandem.kv.wire import Header, MessageKind, WireLayout

LAYOUT = WireLayout(num_layers=2, block_size=4, num_kv_heads=1, head_dim=2, dtype_name="float32")


def _header(grant, kind=MessageKind.DATA, layer=0, first=0, count=1, token=None, request_id=None) -> Header:
    num_blocks = count if kind is MessageKind.DATA else 0
    return Header(kind, 1, grant.token if token is None else token, request_id or grant.request_id, layer, first,
                  num_blocks, LAYOUT, num_blocks * LAYOUT.bytes_per_block)


def _write(table, grant, layer, first, count=1) -> None:
    header = _header(grant, layer=layer, first=first, count=count)
    table.end_write(table.begin_write(header), header, is_received=True)


@pytest.fixture
def released():
    return []


@pytest.fixture
def table(released):
    return GrantTable(num_layers=2, num_blocks=16, on_release=released.append, clock=lambda: 100.0)


def test_register_validates_its_arguments(table):
    with pytest.raises(ValueError, match="repeats"):
        table.register("r", [1, 1], 0, 200.0)
    with pytest.raises(ValueError, match="outside"):
        table.register("r", [1, 16], 0, 200.0)
    with pytest.raises(ValueError, match="num_cached_blocks"):
        table.register("r", [1, 2], 3, 200.0)
    with pytest.raises(ValueError, match="request id"):
        table.register("", [1], 0, 200.0)
    grant = table.register("r", [1, 2], 0, 200.0)
    assert len(grant.token) == 16 and table.register("s", [3], 0, 200.0).token != grant.token
    with pytest.raises(ValueError, match="already"):
        table.register("r", [4], 0, 200.0)


def test_tokens_open_only_their_own_grant_and_blocks(table):
    mine = table.register("mine", [3, 4, 5, 6], 1, 200.0)
    other = table.register("other", [7, 8], 0, 200.0)
    with pytest.raises(GrantRefused, match="token does not match"):
        table.begin_write(_header(mine, first=4, token=other.token))
    with pytest.raises(GrantRefused, match="not writable"):
        table.begin_write(_header(mine, first=3))  # cached block
    with pytest.raises(GrantRefused, match="not writable"):
        table.begin_write(_header(mine, first=6, count=2))  # runs past the grant into block 7
    with pytest.raises(GrantRefused, match="layer 2"):
        table.begin_write(_header(mine, layer=2, first=4))
    with pytest.raises(GrantRefused, match="no live grant"):
        table.begin_write(_header(mine, first=4, request_id="nobody"))
    assert all(not arrived for arrived in mine.arrived)


def test_commit_requires_every_block_of_every_layer(table):
    grant = table.register("r", [2, 3, 9], 1, 200.0)
    _write(table, grant, layer=0, first=3)
    _write(table, grant, layer=0, first=9)
    _write(table, grant, layer=1, first=3)
    with pytest.raises(GrantRefused, match=r"layers \[1\] are incomplete"):
        table.commit(_header(grant, MessageKind.COMMIT))
    _write(table, grant, layer=1, first=9)
    table.commit(_header(grant, MessageKind.COMMIT))
    assert grant.state is GrantState.COMPLETE and grant.done.result() is GrantState.COMPLETE


def test_a_committed_token_cannot_write_again_and_claim_hands_over(table, released):
    grant = table.register("r", [5], 0, 200.0)
    for layer in range(2):
        _write(table, grant, layer, first=5)
    table.commit(_header(grant, MessageKind.COMMIT))
    with pytest.raises(GrantRefused, match="complete"):
        table.begin_write(_header(grant, first=5))
    with pytest.raises(GrantRefused, match="no live grant with this token"):
        table.claim("r", b"x" * 16)
    assert table.claim("r", grant.token) is grant
    assert grant.state is GrantState.CLAIMED and table.get("r") is None and released == []
    with pytest.raises(GrantRefused):
        table.claim("r", grant.token)


def test_claim_refuses_an_incomplete_grant(table):
    grant = table.register("r", [5], 0, 200.0)
    with pytest.raises(GrantRefused, match="pending, not complete"):
        table.claim("r", grant.token)


def test_interrupted_write_is_not_recorded(table):
    grant = table.register("r", [5], 0, 200.0)
    header = _header(grant, first=5)
    table.end_write(table.begin_write(header), header, is_received=False)
    assert grant.missing_layers() == [0, 1]


def test_expiry_releases_unclaimed_grants_once(table, released):
    early = table.register("early", [1], 0, 99.0)
    late = table.register("late", [2], 0, 101.0)
    assert table.expire() == [early]
    assert released == [early] and early.state is GrantState.EXPIRED
    assert table.expire(now=102.0) == [late] and released == [early, late]
    assert table.expire(now=500.0) == [] and len(table) == 0
    with pytest.raises(GrantRefused, match="no live grant"):
        table.begin_write(_header(early, first=1))


def test_cancel_during_a_write_releases_only_after_the_write_lands(table, released):
    grant = table.register("r", [4], 0, 200.0)
    header = _header(grant, first=4)
    table.begin_write(header)
    assert table.cancel("r") is grant and grant.state is GrantState.CANCELLED
    assert released == []  # bytes may still be landing in block 4
    table.end_write(grant, header, is_received=True)
    assert released == [grant]
    assert grant.missing_layers() == [0, 1]  # nothing recorded after the grant ended
    assert table.cancel("r") is None


def test_abort_by_the_writer_releases_and_resolves_waiters(table, released):
    grant = table.register("r", [4], 0, 200.0)
    table.abort(_header(grant, MessageKind.ABORT))
    assert released == [grant] and grant.done.result() is GrantState.ABORTED


def test_release_callback_failure_does_not_break_the_table():
    def explode(_grant):
        raise RuntimeError("boom")

    table = GrantTable(1, 4, on_release=explode)
    table.register("r", [1], 0, 0.0)
    assert [grant.request_id for grant in table.expire(now=1.0)] == ["r"]


async def test_wait_resolves_from_another_thread_and_times_out(table):
    grant = table.register("r", [5], 0, 200.0)
    with pytest.raises(TimeoutError):
        await grant.wait(0.05)

    def writer() -> None:
        for layer in range(2):
            _write(table, grant, layer, first=5)
        table.commit(_header(grant, MessageKind.COMMIT))

    threading.Thread(target=writer).start()
    assert await grant.wait(5.0) is GrantState.COMPLETE
    assert await asyncio.gather(grant.wait(1.0), grant.wait(1.0)) == [GrantState.COMPLETE] * 2


async def test_sweeper_expires_leases(released):
    now = [100.0]
    table = GrantTable(1, 4, on_release=released.append, clock=lambda: now[0])
    grant = table.register("r", [1], 0, 101.0)
    sweeper = asyncio.create_task(table.sweep_forever(0.01))
    await asyncio.sleep(0.05)
    assert released == []
    now[0] = 102.0
    assert await grant.wait(2.0) is GrantState.EXPIRED
    sweeper.cancel()
    assert released == [grant]


def test_commit_reports_why_a_write_with_the_grant_token_was_refused(table):
    grant = table.register("r", [5, 6], 0, 200.0)
    with pytest.raises(GrantRefused, match="not writable"):
        table.begin_write(_header(grant, first=7))
    with pytest.raises(GrantRefused, match="a DATA message was refused: blocks \\[7\\]"):
        table.commit(_header(grant, MessageKind.COMMIT))
    table.note_refusal(_header(grant, token=b"x" * 16), "from a stranger")  # not this grant's writer
    table.note_refusal(_header(grant), "layout mismatch")
    with pytest.raises(GrantRefused, match="refused: layout mismatch"):
        table.commit(_header(grant, MessageKind.COMMIT))
