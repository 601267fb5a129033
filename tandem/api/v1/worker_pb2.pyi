from tandem.api.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_ROLE_UNSPECIFIED: _ClassVar[WorkerRole]
    WORKER_ROLE_PREFILL: _ClassVar[WorkerRole]
    WORKER_ROLE_DECODE: _ClassVar[WorkerRole]
WORKER_ROLE_UNSPECIFIED: WorkerRole
WORKER_ROLE_PREFILL: WorkerRole
WORKER_ROLE_DECODE: WorkerRole

class KVLayout(_message.Message):
    __slots__ = ("num_layers", "block_size", "num_kv_heads", "head_dim", "dtype")
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    num_layers: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    def __init__(self, num_layers: _Optional[int] = ..., block_size: _Optional[int] = ..., num_kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., dtype: _Optional[str] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "lease_seconds", "num_samples")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    lease_seconds: float
    num_samples: int
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., lease_seconds: _Optional[float] = ..., num_samples: _Optional[int] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("request_id", "kv_address", "block_ids", "num_cached_blocks", "token", "lease_expires_at", "layout", "worker_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KV_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_CACHED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    kv_address: str
    block_ids: _containers.RepeatedScalarFieldContainer[int]
    num_cached_blocks: int
    token: bytes
    lease_expires_at: float
    layout: KVLayout
    worker_id: str
    def __init__(self, request_id: _Optional[str] = ..., kv_address: _Optional[str] = ..., block_ids: _Optional[_Iterable[int]] = ..., num_cached_blocks: _Optional[int] = ..., token: _Optional[bytes] = ..., lease_expires_at: _Optional[float] = ..., layout: _Optional[_Union[KVLayout, _Mapping]] = ..., worker_id: _Optional[str] = ...) -> None: ...

class PrefillRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "sampling", "reservation", "return_hidden_state")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    RETURN_HIDDEN_STATE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _inference_pb2.SamplingParams
    reservation: Reservation
    return_hidden_state: bool
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_inference_pb2.SamplingParams, _Mapping]] = ..., reservation: _Optional[_Union[Reservation, _Mapping]] = ..., return_hidden_state: _Optional[bool] = ...) -> None: ...

class PrefillResponse(_message.Message):
    __slots__ = ("request_id", "first_token_id", "first_token_logprob", "hidden_state", "num_computed_tokens", "kv_bytes", "kv_exposed_seconds", "probe_difficulty")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATE_FIELD_NUMBER: _ClassVar[int]
    NUM_COMPUTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_EXPOSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROBE_DIFFICULTY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    first_token_id: int
    first_token_logprob: _inference_pb2.TokenLogprob
    hidden_state: _containers.RepeatedScalarFieldContainer[float]
    num_computed_tokens: int
    kv_bytes: int
    kv_exposed_seconds: float
    probe_difficulty: float
    def __init__(self, request_id: _Optional[str] = ..., first_token_id: _Optional[int] = ..., first_token_logprob: _Optional[_Union[_inference_pb2.TokenLogprob, _Mapping]] = ..., hidden_state: _Optional[_Iterable[float]] = ..., num_computed_tokens: _Optional[int] = ..., kv_bytes: _Optional[int] = ..., kv_exposed_seconds: _Optional[float] = ..., probe_difficulty: _Optional[float] = ...) -> None: ...

class DecodeBudget(_message.Message):
    __slots__ = ("max_tokens", "max_thinking_tokens", "deadline", "max_total_tokens", "starts_in_thinking")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_THINKING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STARTS_IN_THINKING_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    max_thinking_tokens: int
    deadline: float
    max_total_tokens: int
    starts_in_thinking: bool
    def __init__(self, max_tokens: _Optional[int] = ..., max_thinking_tokens: _Optional[int] = ..., deadline: _Optional[float] = ..., max_total_tokens: _Optional[int] = ..., starts_in_thinking: _Optional[bool] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("request_id", "reservation_token", "first_token_id", "prompt_token_ids", "colocated", "sampling", "budget", "output_token_ids", "return_hidden_state", "probe_budgets")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    COLOCATED_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    RETURN_HIDDEN_STATE_FIELD_NUMBER: _ClassVar[int]
    PROBE_BUDGETS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reservation_token: bytes
    first_token_id: int
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    colocated: bool
    sampling: _inference_pb2.SamplingParams
    budget: DecodeBudget
    output_token_ids: _containers.RepeatedScalarFieldContainer[int]
    return_hidden_state: bool
    probe_budgets: _containers.RepeatedCompositeFieldContainer[ProbeBudget]
    def __init__(self, request_id: _Optional[str] = ..., reservation_token: _Optional[bytes] = ..., first_token_id: _Optional[int] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., colocated: _Optional[bool] = ..., sampling: _Optional[_Union[_inference_pb2.SamplingParams, _Mapping]] = ..., budget: _Optional[_Union[DecodeBudget, _Mapping]] = ..., output_token_ids: _Optional[_Iterable[int]] = ..., return_hidden_state: _Optional[bool] = ..., probe_budgets: _Optional[_Iterable[_Union[ProbeBudget, _Mapping]]] = ...) -> None: ...

class ProbeBudget(_message.Message):
    __slots__ = ("min_probe_difficulty", "max_thinking_tokens")
    MIN_PROBE_DIFFICULTY_FIELD_NUMBER: _ClassVar[int]
    MAX_THINKING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    min_probe_difficulty: float
    max_thinking_tokens: int
    def __init__(self, min_probe_difficulty: _Optional[float] = ..., max_thinking_tokens: _Optional[int] = ...) -> None: ...

class DecodeChunk(_message.Message):
    __slots__ = ("request_id", "sample_index", "token_ids", "logprobs", "sections", "finish_reason", "finish_detail", "num_cached_prompt_tokens", "hidden_state", "probe_difficulty")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    SECTIONS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    FINISH_DETAIL_FIELD_NUMBER: _ClassVar[int]
    NUM_CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATE_FIELD_NUMBER: _ClassVar[int]
    PROBE_DIFFICULTY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    sample_index: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedCompositeFieldContainer[_inference_pb2.TokenLogprob]
    sections: _containers.RepeatedScalarFieldContainer[_inference_pb2.TokenSection]
    finish_reason: _inference_pb2.FinishReason
    finish_detail: str
    num_cached_prompt_tokens: int
    hidden_state: _containers.RepeatedScalarFieldContainer[float]
    probe_difficulty: float
    def __init__(self, request_id: _Optional[str] = ..., sample_index: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[_Union[_inference_pb2.TokenLogprob, _Mapping]]] = ..., sections: _Optional[_Iterable[_Union[_inference_pb2.TokenSection, str]]] = ..., finish_reason: _Optional[_Union[_inference_pb2.FinishReason, str]] = ..., finish_detail: _Optional[str] = ..., num_cached_prompt_tokens: _Optional[int] = ..., hidden_state: _Optional[_Iterable[float]] = ..., probe_difficulty: _Optional[float] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("request_id", "reason", "sample_indices")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INDICES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reason: str
    sample_indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, request_id: _Optional[str] = ..., reason: _Optional[str] = ..., sample_indices: _Optional[_Iterable[int]] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("found", "num_freed_blocks")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    NUM_FREED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    num_freed_blocks: int
    def __init__(self, found: _Optional[bool] = ..., num_freed_blocks: _Optional[int] = ...) -> None: ...

class GetLoadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerLoad(_message.Message):
    __slots__ = ("worker_id", "role", "model", "num_running", "num_waiting", "num_queued_prompt_tokens", "num_kv_blocks_total", "num_kv_blocks_used", "num_kv_blocks_reserved", "accepting", "max_context", "layout", "num_requests_in_flight")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    NUM_WAITING_FIELD_NUMBER: _ClassVar[int]
    NUM_QUEUED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_BLOCKS_USED_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_BLOCKS_RESERVED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTING_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    NUM_REQUESTS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    role: WorkerRole
    model: str
    num_running: int
    num_waiting: int
    num_queued_prompt_tokens: int
    num_kv_blocks_total: int
    num_kv_blocks_used: int
    num_kv_blocks_reserved: int
    accepting: bool
    max_context: int
    layout: KVLayout
    num_requests_in_flight: int
    def __init__(self, worker_id: _Optional[str] = ..., role: _Optional[_Union[WorkerRole, str]] = ..., model: _Optional[str] = ..., num_running: _Optional[int] = ..., num_waiting: _Optional[int] = ..., num_queued_prompt_tokens: _Optional[int] = ..., num_kv_blocks_total: _Optional[int] = ..., num_kv_blocks_used: _Optional[int] = ..., num_kv_blocks_reserved: _Optional[int] = ..., accepting: _Optional[bool] = ..., max_context: _Optional[int] = ..., layout: _Optional[_Union[KVLayout, _Mapping]] = ..., num_requests_in_flight: _Optional[int] = ...) -> None: ...
