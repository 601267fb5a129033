"""What one request sends, independent of the API that carries it (gRPC, OpenAI HTTP, worker)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class PromptSpec:
    """One prompt of a run's prompt set: token ids, a chat, or plain text."""

    prompt_id: int
    form: str  # "tokens", "chat" or "text"
    token_ids: tuple[int, ...] = ()
    messages: tuple[tuple[str, str], ...] = ()
    text: str = ""


@dataclass(slots=True)
class RequestBody:
    """A request to the router's public API; None leaves a field unset."""

    api_key: str
    model: str
    prompt: PromptSpec
    max_tokens: int | None
    deadline_s: float | None
    num_samples: int = 1
    temperature: float | None = 0.0
    seed: int | None = None
    request_id: str = ""
    max_thinking_tokens: int | None = None
    thinking: bool | None = None
    top_p: float | None = None


@dataclass(slots=True)
class WorkerCall:
    """A call straight to a worker's internal API, as any pod in the cluster could make it."""

    target: str  # worker name, e.g. "decode-0"
    method: str  # "Reserve", "Cancel" or "GetLoad"
    request_id: str = ""
    lease_seconds: float = 0.0
    prompt_token_ids: tuple[int, ...] = ()
