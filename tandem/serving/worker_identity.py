"""Who a worker is and how it reports its load (the WorkerLoad message)."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.api.v1 import worker_pb2
from tandem.kv.reservation import layout_to_proto
from tandem.kv.wire import WireLayout


@dataclass(slots=True)
class WorkerIdentity:
    """A worker's id, model, context and KV layout."""

    worker_id: str
    model: str
    max_context: int
    wire_layout: WireLayout

    @classmethod
    def of_engine(cls, engine, worker_id: str, model: str) -> WorkerIdentity:
        """The identity of a worker serving this engine."""
        return cls(worker_id, model, engine.max_model_len, WireLayout.of_tensor(engine.kv_cache))

    def load(self, stats, role: int, is_accepting: bool,
             num_requests_in_flight: int) -> worker_pb2.WorkerLoad:
        """The WorkerLoad message for the engine's latest stats."""
        return worker_pb2.WorkerLoad(
            worker_id=self.worker_id, role=role, model=self.model,
            num_running=stats.num_running, num_waiting=stats.num_waiting,
            num_queued_prompt_tokens=stats.num_queued_prompt_tokens,
            num_kv_blocks_total=stats.num_blocks_total, num_kv_blocks_used=stats.num_blocks_used,
            num_kv_blocks_reserved=stats.num_blocks_reserved, accepting=is_accepting,
            max_context=self.max_context, layout=layout_to_proto(self.wire_layout),
            num_requests_in_flight=num_requests_in_flight)
