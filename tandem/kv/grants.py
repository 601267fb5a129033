"""The receiver's grant table: which writer may write which blocks, and what has arrived.

A grant is created by the decode worker for one reservation and carries a one-time token. The
token is valid only for its own request id, only for the grant's non-cached blocks and only
while the grant is PENDING: a commit, an abort, a cancel or the lease expiry ends it, and
anything else is refused with a logged reason. Every grant ends exactly one way:
  - claimed by the decode worker (`claim`), which then owns its blocks; or
  - released (aborted by the writer, cancelled, or its lease expired): `on_release(grant)` fires
    once, after any write still landing in its blocks has finished, so the owner can free them.
Completion is signalled through a thread-safe future that `KVGrant.wait` awaits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from tandem.kv.wire import MAX_REQUEST_ID_NBYTES, TOKEN_NBYTES, Header
from tandem.telemetry.metrics import default_metrics

logger = logging.getLogger("tandem.kv.grants")


class GrantState(Enum):
    """Where a grant is in its life."""

    PENDING = "pending"  # accepting writes
    COMPLETE = "complete"  # committed with every block of every layer; waiting to be claimed
    CLAIMED = "claimed"  # taken over by the decode worker
    ABORTED = "aborted"  # the writer gave up
    CANCELLED = "cancelled"  # the owner cancelled it
    EXPIRED = "expired"  # the lease ran out before a claim


_RELEASED_STATES = (GrantState.ABORTED, GrantState.CANCELLED, GrantState.EXPIRED)


class GrantRefused(ValueError):
    """A write, commit, abort or claim that the grant table does not allow."""


@dataclass(slots=True, eq=False)
class KVGrant:
    """One reservation's right to be written: its token, blocks, arrivals and lease."""

    request_id: str
    token: bytes
    block_ids: tuple[int, ...]
    num_cached_blocks: int
    num_layers: int
    lease_expires_at: float
    state: GrantState = GrantState.PENDING
    num_writes_in_flight: int = 0
    is_released: bool = False
    # Per layer, the writable block ids whose bytes have fully arrived.
    arrived: list[set[int]] = field(default_factory=list)
    writable: frozenset[int] = frozenset()
    # Why the last DATA message carrying this grant's token was refused, for the commit's answer.
    last_refusal: str = ""
    done: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    @property
    def writable_block_ids(self) -> tuple[int, ...]:
        """Block ids the writer must fill (the non-cached ones), in prompt order."""
        return self.block_ids[self.num_cached_blocks:]

    def missing_layers(self) -> list[int]:
        """Layers that still lack some writable block."""
        return [layer for layer, got in enumerate(self.arrived) if len(got) != len(self.writable)]

    async def wait(self, timeout: float) -> GrantState:
        """Waits until the grant completes or ends; returns the state that ended the wait."""
        future = asyncio.shield(asyncio.wrap_future(self.done))
        return await asyncio.wait_for(future, timeout)


class GrantTable:
    """Thread-safe table of live grants for one receiver's cache."""

    def __init__(self, num_layers: int, num_blocks: int,
                 on_release: Callable[[KVGrant], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if num_layers <= 0 or num_blocks <= 0:
            raise ValueError(f"GrantTable needs positive num_layers and num_blocks, got {num_layers}, {num_blocks}")
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.on_release = on_release
        self.clock = clock
        self._grants: dict[str, KVGrant] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._grants)

    def register(self, request_id: str, block_ids: Sequence[int], num_cached_blocks: int,
                 lease_expires_at: float) -> KVGrant:
        """Creates a grant with a fresh one-time token; raises ValueError on bad arguments."""
        block_ids = tuple(int(block_id) for block_id in block_ids)
        self._check_registration(request_id, block_ids, num_cached_blocks, lease_expires_at)
        grant = KVGrant(request_id, secrets.token_bytes(TOKEN_NBYTES), block_ids, num_cached_blocks,
                        self.num_layers, lease_expires_at)
        grant.writable = frozenset(grant.writable_block_ids)
        grant.arrived = [set() for _ in range(self.num_layers)]
        with self._lock:
            if request_id in self._grants:
                raise ValueError(f"request {request_id!r} already has a live grant")
            self._grants[request_id] = grant
        return grant

    def _check_registration(self, request_id: str, block_ids: tuple[int, ...], num_cached_blocks: int,
                            lease_expires_at: float) -> None:
        if not request_id or len(request_id.encode()) > MAX_REQUEST_ID_NBYTES:
            raise ValueError(f"request id must be 1..{MAX_REQUEST_ID_NBYTES} UTF-8 bytes, got {request_id!r}")
        if len(set(block_ids)) != len(block_ids):
            raise ValueError(f"grant for {request_id!r} repeats block ids")
        out_of_range = [block_id for block_id in block_ids if not 0 <= block_id < self.num_blocks]
        if out_of_range:
            raise ValueError(f"block ids {out_of_range} are outside the cache's {self.num_blocks} blocks")
        if not 0 <= num_cached_blocks <= len(block_ids):
            raise ValueError(f"num_cached_blocks {num_cached_blocks} must be within 0..{len(block_ids)}")
        if not math.isfinite(lease_expires_at):
            raise ValueError(f"lease_expires_at must be a finite Unix time, got {lease_expires_at}")

    def get(self, request_id: str) -> KVGrant | None:
        """The live grant of a request, if any."""
        with self._lock:
            return self._grants.get(request_id)

    def _authorize(self, header: Header) -> KVGrant:
        """The pending grant the header's token opens; caller holds the lock."""
        grant = self._grants.get(header.request_id)
        if grant is None:
            raise GrantRefused(f"request {header.request_id!r} has no live grant (unknown, claimed or ended)")
        if not hmac.compare_digest(grant.token, header.token):
            raise GrantRefused(f"token does not match the grant of request {header.request_id!r}")
        if grant.state is not GrantState.PENDING:
            raise GrantRefused(f"grant of request {header.request_id!r} is {grant.state.value}; "
                               "its token no longer allows writes")
        return grant

    def begin_write(self, header: Header) -> KVGrant:
        """Authorizes a DATA header and pins the grant until `end_write`; raises GrantRefused."""
        with self._lock:
            grant = self._authorize(header)
            run = range(header.first_block_id, header.first_block_id + header.num_blocks)
            outside = [block_id for block_id in run if block_id not in grant.writable]
            if not 0 <= header.layer < self.num_layers:
                grant.last_refusal = f"layer {header.layer} is outside 0..{self.num_layers - 1}"
            elif outside:
                grant.last_refusal = (f"blocks {outside[:8]} of run {run.start}+{len(run)} are not writable "
                                      f"under the grant of request {header.request_id!r}")
            else:
                grant.num_writes_in_flight += 1
                return grant
            raise GrantRefused(grant.last_refusal)

    def note_refusal(self, header: Header, reason: str) -> None:
        """Records why a message was refused on the grant its token opens (if any), for the commit."""
        with self._lock:
            grant = self._grants.get(header.request_id)
            if grant is not None and hmac.compare_digest(grant.token, header.token):
                grant.last_refusal = reason

    def end_write(self, grant: KVGrant, header: Header, is_received: bool) -> None:
        """Unpins a grant; records the run as arrived if its bytes fully landed while PENDING."""
        with self._lock:
            grant.num_writes_in_flight -= 1
            if is_received and grant.state is GrantState.PENDING:
                grant.arrived[header.layer].update(
                    range(header.first_block_id, header.first_block_id + header.num_blocks))
            to_release = self._take_releasable(grant)
        self._release(to_release)

    def commit(self, header: Header) -> KVGrant:
        """Marks a grant COMPLETE if every writable block of every layer arrived; else refuses."""
        with self._lock:
            grant = self._authorize(header)
            missing = grant.missing_layers()
            if missing or grant.num_writes_in_flight:
                refused = f"; a DATA message was refused: {grant.last_refusal}" if grant.last_refusal else ""
                raise GrantRefused(f"commit of request {header.request_id!r} is early: layers {missing[:8]} "
                                   f"are incomplete, {grant.num_writes_in_flight} writes in flight{refused}")
            grant.state = GrantState.COMPLETE
        grant.done.set_result(GrantState.COMPLETE)
        return grant

    def abort(self, header: Header) -> KVGrant:
        """Ends a pending grant at the writer's request; its blocks are released."""
        with self._lock:
            grant = self._authorize(header)
        self._end(grant, GrantState.ABORTED)
        return grant

    def claim(self, request_id: str, token: bytes) -> KVGrant:
        """Hands a COMPLETE grant's blocks to the decode worker; raises GrantRefused otherwise."""
        with self._lock:
            grant = self._grants.get(request_id)
            if grant is None or not hmac.compare_digest(grant.token, token):
                raise self._refused(f"claim of request {request_id!r}: no live grant with this token")
            if grant.state is not GrantState.COMPLETE:
                raise self._refused(f"claim of request {request_id!r}: grant is {grant.state.value}, not complete")
            grant.state = GrantState.CLAIMED
            del self._grants[request_id]
        return grant

    def cancel(self, request_id: str) -> KVGrant | None:
        """Ends a request's grant at the owner's request; returns it, or None if there was none."""
        grant = self.get(request_id)
        if grant is not None:
            self._end(grant, GrantState.CANCELLED)
        return grant

    def expire(self, now: float | None = None) -> list[KVGrant]:
        """Ends every grant whose lease has passed (claimed ones are gone already); returns them."""
        now = self.clock() if now is None else now
        with self._lock:
            expired = [grant for grant in self._grants.values() if grant.lease_expires_at <= now]
        for grant in expired:
            self._end(grant, GrantState.EXPIRED)
            logger.info("lease of request %r expired in state %s", grant.request_id, grant.state.value)
        return expired

    async def sweep_forever(self, interval_s: float) -> None:
        """Expires leases every `interval_s` seconds until cancelled."""
        while True:
            self.expire()
            await asyncio.sleep(interval_s)

    def _end(self, grant: KVGrant, state: GrantState) -> None:
        with self._lock:
            if self._grants.get(grant.request_id) is not grant:
                return
            del self._grants[grant.request_id]
            grant.state = state
            to_release = self._take_releasable(grant)
        if not grant.done.done():
            grant.done.set_result(state)
        self._release(to_release)

    @staticmethod
    def _take_releasable(grant: KVGrant) -> KVGrant | None:
        """The grant if it must be released now (ended, no write in flight); caller holds the lock."""
        if grant.state in _RELEASED_STATES and grant.num_writes_in_flight == 0 and not grant.is_released:
            grant.is_released = True
            return grant
        return None

    def _release(self, grant: KVGrant | None) -> None:
        if grant is None or self.on_release is None:
            return
        try:
            self.on_release(grant)
        except Exception:
            # The grant is gone but its owner never heard: its blocks stay held.
            logger.warning("release callback failed for request %r: its blocks may stay held",
                           grant.request_id, exc_info=True)
            default_metrics().dropped_errors.labels(component="kv_grants",
                                                    kind="release_callback_failed").inc()

    @staticmethod
    def _refused(reason: str) -> GrantRefused:
        logger.warning("refused: %s", reason)
        return GrantRefused(reason)
