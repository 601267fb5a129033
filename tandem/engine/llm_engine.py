"""LLMEngine: requests in, tokens out, one continuous-batching step at a time.

The engine ties the scheduler, the model runner and the sampler together and makes each token
final: it applies the thinking budget (forced delimiters), EOS, stop ids, stop strings and length
limits. It also offers the hooks that the disaggregated workers use: prefill-only requests whose
blocks stay held until release, reservations that receive KV from elsewhere, and forks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tandem.engine.block_manager import KVCacheManager
from tandem.engine.engine_config import EngineConfig, resolve_max_model_len, resolve_num_blocks
from tandem.engine.kv_canary import KVCanary
from tandem.engine.model_config import ModelConfig
from tandem.engine.model_runner import LayerHook, ModelRunner
from tandem.engine.request_checks import RequestChecker
from tandem.engine.request_output import Completion, RequestOutput, TokenLogprob
from tandem.engine.sampler import SampleResult, sample, skip_draws
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.scheduler import Scheduler
from tandem.engine.sequence import FinishReason, Sequence, SequenceStatus
from tandem.engine.text_stream import TextStream
from tandem.engine.tokenizer import IncrementalDetokenizer, Tokenizer
from tandem.engine.weights import load_model

HELD = (SequenceStatus.PREFILLED, SequenceStatus.RESERVED)


class CapacityError(RuntimeError):
    """The KV cache has no room for what was asked (a reservation, or any progress at all)."""


@dataclass(slots=True)
class EngineStats:
    """Load figures for routing, autoscaling and metrics."""

    num_running: int
    num_waiting: int
    num_queued_prompt_tokens: int
    num_blocks_total: int
    num_blocks_used: int  # blocks with at least one reference (reserved ones included)
    num_blocks_cached: int  # unused blocks that still hold reusable prefix KV
    num_blocks_reserved: int  # blocks held by reservations and finished prefill-only requests
    num_preemptions: int  # running requests sent back to the queue since start


class LLMEngine:
    """Continuous-batching inference over one Llama-family model (not thread-safe: drive it from
    one thread, e.g. a worker's engine loop)."""

    def __init__(self, model_dir: str | Path, config: EngineConfig) -> None:
        model, model_config = load_model(model_dir, dtype=config.torch_dtype, device=config.device)
        self._setup(model, Tokenizer.from_model_dir(model_dir), model_config, config)

    @classmethod
    def from_parts(cls, model: torch.nn.Module, tokenizer, model_config: ModelConfig,
                   config: EngineConfig) -> LLMEngine:
        """An engine over an already loaded model; tokenizer may be None (no text, no stop strings).

        With config.pack_cpu_linears on a CPU, the model's Linear layers are repacked in place.
        """
        engine = cls.__new__(cls)
        engine._setup(model, tokenizer, model_config, config)
        return engine

    def _setup(self, model, tokenizer, model_config: ModelConfig, config: EngineConfig) -> None:
        self.config = config
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.max_model_len = resolve_max_model_len(config, model_config.max_position_embeddings)
        one_block = model_config.kv_cache_spec(1, config.block_size, config.torch_dtype)
        bytes_per_block = one_block.bytes_per_block_per_layer * model_config.num_hidden_layers
        num_blocks = resolve_num_blocks(config, bytes_per_block)
        self.kv_manager = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.kv_manager)
        spec = model_config.kv_cache_spec(num_blocks, config.block_size, config.torch_dtype)
        self.runner = ModelRunner(model, spec, config.device, config.pack_cpu_linears)
        if config.debug_kv_canary:
            self.kv_manager.pool.watch_free_blocks(KVCanary(self.runner.kv_cache))
        eos_ids = tokenizer.eos_token_ids if tokenizer is not None else model_config.eos_token_ids
        self.eos_token_ids = frozenset(eos_ids)
        self.checker = RequestChecker(model_config.vocab_size, self.max_model_len, config.block_size,
                                      num_blocks, has_tokenizer=tokenizer is not None)
        self._seqs: dict[str, Sequence] = {}
        self._pending_outputs: list[RequestOutput] = []
        self._layer_hook: LayerHook | None = None
        self._num_generate_calls = 0
        # The last step ran nothing and no request, release or abort came since (see is_stalled).
        self._is_stalled = False

    @property
    def kv_cache(self) -> torch.Tensor:
        """The paged cache [num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim]."""
        return self.runner.kv_cache

    @property
    def kv_spec(self):
        """Shape and dtype of the KV cache (KVCacheSpec)."""
        return self.runner.spec

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    prefill_only: bool = False, output_token_ids: list[int] = ()) -> None:
        """Queues a request; raises ValueError (and changes nothing) when it is invalid.

        prefill_only: compute the prompt and make only the first token (plus the hidden state),
        then keep the blocks until release(request_id).
        output_token_ids: tokens the request already generated elsewhere (a migrated request). It
        goes on after them as if it had made them itself: they count toward max_tokens and the
        thinking budget, complete stop strings, and a seeded request skips their draws.
        """
        self.checker.check_new(request_id, self._seqs, prompt_token_ids, params)
        if output_token_ids:
            self.checker.check_resumed(output_token_ids, params, prefill_only)
        seq = Sequence(request_id, prompt_token_ids, params, self.config.device, prefill_only)
        seq.detokenizer = self._text_stream(seq)
        for token_id in output_token_ids:
            seq.append_token(token_id)
            if seq.detokenizer is not None:
                seq.detokenizer.add(token_id)
        if seq.detokenizer is not None:
            seq.detokenizer.mark_streamed()
        skip_draws(seq, len(output_token_ids), self.model_config.vocab_size)
        self._seqs[request_id] = seq
        self.scheduler.add(seq)
        self._is_stalled = False

    def step(self) -> list[RequestOutput]:
        """Runs one batch; returns one output per request that made a token or finished."""
        outputs, self._pending_outputs = self._pending_outputs, []
        batch = self.scheduler.schedule()
        if batch.is_empty:
            self._is_stalled = batch.num_preempted == 0 and self.scheduler.has_work()
            return outputs
        step_output = self.runner.execute(batch, self._layer_hook)
        sampled = sample(step_output.logits, step_output.seqs)
        self.scheduler.update_after_step(batch)
        for row, seq in enumerate(step_output.seqs):
            outputs.append(self._add_token(seq, row, sampled, step_output.hidden))
        return outputs

    def abort(self, request_id: str) -> int:
        """Drops a request in any state; returns the blocks that became unused (0 if unknown)."""
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return 0
        self._is_stalled = False
        return self.scheduler.finish(seq, FinishReason.ABORT)

    def has_unfinished_requests(self) -> bool:
        """True while any request waits or runs, or has an output that step() has not returned
        yet (held reservations and prefills do not count)."""
        return self.scheduler.has_work() or bool(self._pending_outputs)

    @property
    def is_stalled(self) -> bool:
        """True when the last step could run nothing (the waiting requests need blocks that
        reservations or prefilled requests hold) and nothing has changed since: stepping again is
        pointless until a request is added, released or aborted."""
        return self._is_stalled

    def generate(self, prompts: list[list[int]],
                 params: SamplingParams | list[SamplingParams]) -> list[Completion]:
        """Runs the prompts to completion on an idle engine; one Completion per prompt, in order."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params_list)} SamplingParams")
        if self.has_unfinished_requests():
            raise RuntimeError("generate needs an idle engine: other requests are still running")
        self._num_generate_calls += 1
        request_ids = [f"generate-{self._num_generate_calls}-{i}" for i in range(len(prompts))]
        for i, (prompt, prompt_params) in enumerate(zip(prompts, params_list)):
            self.checker.check_new(request_ids[i], self._seqs, prompt, prompt_params)
        completions = {rid: Completion(rid, list(p), [], "", None, [] if sp.needs_logprobs else None, 0)
                       for rid, p, sp in zip(request_ids, prompts, params_list)}
        for request_id, prompt, prompt_params in zip(request_ids, prompts, params_list):
            self.add_request(request_id, prompt, prompt_params)
        while self.has_unfinished_requests():
            outputs = self.step()
            if self._is_stalled:
                raise CapacityError("no request can be admitted: reserved or prefilled requests "
                                    "hold the KV blocks they need")
            for output in outputs:
                completions[output.request_id].add(output)
        return [completions[rid] for rid in request_ids]

    def stats(self) -> EngineStats:
        """Current queue, batch and KV block figures."""
        pool = self.kv_manager.pool
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_queued_prompt_tokens=self.scheduler.num_queued_prompt_tokens(),
            num_blocks_total=pool.num_blocks,
            num_blocks_used=pool.num_blocks - pool.num_free,
            num_blocks_cached=pool.num_cached_free,
            num_blocks_reserved=sum(len(s.block_ids) for s in self._seqs.values() if s.status in HELD),
            num_preemptions=self.scheduler.num_preemptions,
        )

    def sweep_kv_canary(self) -> int:
        """Canary mode: checks every free, uncached block for writes after its release; returns the
        violations found (each logged at ERROR and counted; 0 when canary mode is off)."""
        return self.kv_manager.pool.check_free_blocks()

    def set_layer_hook(self, hook: LayerHook | None) -> None:
        """Calls hook(layer, [(request_id, block_ids, start, end)]) after each layer writes the KV
        of the prompt tokens [start, end) computed this step (None removes it)."""
        self._layer_hook = hook

    def block_ids(self, request_id: str) -> list[int]:
        """The request's current block table."""
        return list(self._get(request_id).block_ids)

    def release(self, request_id: str) -> int:
        """Frees a finished prefill-only request or an unclaimed reservation; returns the blocks
        that became unused (0 if unknown)."""
        seq = self._seqs.get(request_id)
        if seq is None:
            return 0
        if seq.status not in HELD:
            raise ValueError(f"request {request_id!r} is {seq.status.value}; release frees prefilled "
                             "or reserved requests only (use abort)")
        del self._seqs[request_id]
        seq.status = SequenceStatus.FINISHED
        self._is_stalled = False
        return self.kv_manager.free(seq)

    def reserve(self, request_id: str, prompt_token_ids: list[int]) -> tuple[list[int], int]:
        """Decode side: allocates blocks for a prompt whose KV will be written from outside,
        reusing cached prefix blocks; returns (block_ids, num_cached_blocks). Raises CapacityError
        when the pool is short."""
        self.checker.check_new(request_id, self._seqs, prompt_token_ids, SamplingParams(max_tokens=1))
        seq = Sequence(request_id, prompt_token_ids, SamplingParams(max_tokens=1), self.config.device)
        computed_blocks, num_hit_tokens = self.kv_manager.get_computed_blocks(seq)
        if self.kv_manager.allocate_slots(seq, seq.num_tokens - num_hit_tokens, computed_blocks) is None:
            num_needed = self.kv_manager.num_blocks_for(seq.num_tokens) - len(computed_blocks)
            raise CapacityError(f"cannot reserve {num_needed} KV blocks for request {request_id!r}: "
                                f"{self.kv_manager.pool.num_free} of {self.kv_manager.pool.num_blocks} are free")
        seq.status = SequenceStatus.RESERVED
        seq.num_cached_prompt_tokens = num_hit_tokens
        self._seqs[request_id] = seq
        return list(seq.block_ids), len(computed_blocks)

    def add_prefilled_request(self, request_id: str, prompt_token_ids: list[int], first_token_id: int,
                              params: SamplingParams) -> None:
        """Decode side: the reservation's blocks now hold the prompt's KV (written from outside, or
        computed here by a prefill-only request of the same id); the request joins the batch in
        decode with first_token_id as its first output (not reported again)."""
        reserved = self._seqs.get(request_id)
        if reserved is None or reserved.status not in (SequenceStatus.RESERVED, SequenceStatus.PREFILLED):
            raise ValueError(f"request {request_id!r} has no reservation; call reserve() first")
        self.checker.check_prefilled(reserved, prompt_token_ids, first_token_id, params)
        seq = Sequence(request_id, prompt_token_ids, params, self.config.device)
        seq.block_ids, seq.block_hashes = reserved.block_ids, reserved.block_hashes
        seq.num_cached_blocks = reserved.num_cached_blocks
        seq.num_cached_prompt_tokens = reserved.num_cached_prompt_tokens
        seq.num_computed_tokens = seq.num_prompt_tokens
        seq.status = SequenceStatus.RESERVED  # holds the blocks but is in no queue yet
        self.kv_manager.cache_blocks(seq)
        seq.detokenizer = self._text_stream(seq)
        self._seqs[request_id] = seq
        seq.append_token(first_token_id)
        # The prefill side drew the first token's noise from the same seed.
        skip_draws(seq, 1, self.model_config.vocab_size)
        reason = self._finish_reason(seq, first_token_id)
        if seq.detokenizer is not None:
            seq.detokenizer.mark_streamed()  # by the prefill side; it may still begin a stop string
        self._is_stalled = False
        if reason is None:
            self.scheduler.add(seq, at_front=True)
            return
        self._finish(seq, reason)
        self._pending_outputs.append(RequestOutput(
            request_id, [], [] if params.needs_logprobs else None, [], "", True, reason,
            seq.num_cached_prompt_tokens or 0))

    def fork(self, request_id: str, new_request_id: str, params: SamplingParams) -> None:
        """Starts new_request_id as a copy-on-write fork of a running or prefilled request: it
        shares the KV blocks and continues from the same tokens with its own params and seed
        (exactly as an independent request with that seed would, had it made the same tokens)."""
        parent = self._get(request_id)
        self.checker.check_fork(parent, new_request_id, self._seqs, params)
        child = parent.fork(new_request_id, params)
        self.kv_manager.fork(parent, child)
        skip_draws(child, parent.num_output_tokens, self.model_config.vocab_size)
        child.detokenizer = self._text_stream(child)
        if child.detokenizer is not None:
            for token_id in parent.output_token_ids:
                child.detokenizer.add(token_id)
            # The parent streamed the shared tokens' text but what it still holds back.
            num_unstreamed = 0 if parent.detokenizer is None else parent.detokenizer.num_pending
            child.detokenizer.mark_streamed(num_unstreamed)
        self._seqs[new_request_id] = child
        self.scheduler.add(child, at_front=True)
        self._is_stalled = False

    def fork_prompt(self, request_id: str, new_request_id: str, params: SamplingParams) -> None:
        """Starts new_request_id on request_id's prompt, sharing the blocks that hold its KV
        (copy-on-write): it computes only the prompt's last token again and draws its own first
        token, exactly as an independent request with these params would. The parent must hold
        its prompt's KV: a filled reservation, a prefilled request, or one past its prefill."""
        parent = self._get(request_id)
        num_shared = parent.num_prompt_tokens - 1
        has_prompt_kv = parent.status in HELD or (
            parent.block_ids and parent.num_computed_tokens >= num_shared)
        if parent.status is SequenceStatus.FINISHED or not has_prompt_kv:
            raise ValueError(f"request {request_id!r} holds no KV for its prompt to fork from")
        self.checker.check_new(new_request_id, self._seqs, parent.prompt_token_ids, params)
        child = Sequence(new_request_id, parent.prompt_token_ids, params, self.config.device)
        num_full_blocks = num_shared // self.config.block_size
        child.block_ids = parent.block_ids[:self.kv_manager.num_blocks_for(num_shared)]
        self.kv_manager.pool.touch(child.block_ids)
        child.block_hashes = list(parent.block_hashes[:num_full_blocks])
        child.num_cached_blocks = min(parent.num_cached_blocks, num_full_blocks)
        child.num_cached_prompt_tokens = parent.num_cached_prompt_tokens
        child.num_computed_tokens = num_shared
        child.detokenizer = self._text_stream(child)
        self._seqs[new_request_id] = child
        self.scheduler.add(child, at_front=True)
        self._is_stalled = False

    def _add_token(self, seq: Sequence, row: int, sampled: SampleResult, hidden: torch.Tensor) -> RequestOutput:
        token_id = sampled.token_ids[row]
        hidden_state = hidden[row].float().cpu().clone() if seq.num_output_tokens == 0 else None
        section = seq.append_token(token_id)
        reason = self._finish_reason(seq, token_id)
        if seq.is_prefill_only and reason is None:
            reason = FinishReason.PREFILLED
        if reason is not None:
            self._finish(seq, reason)
        logprobs = None
        if seq.params.needs_logprobs:
            logprobs = [TokenLogprob(token_id, sampled.logprobs[row], sampled.top_logprobs[row])]
        text = "" if seq.detokenizer is None else seq.detokenizer.take(is_final=reason is not None)
        return RequestOutput(seq.request_id, [token_id], logprobs, [section], text, reason is not None,
                             reason, seq.num_cached_prompt_tokens or 0, hidden_state)

    def _finish_reason(self, seq: Sequence, token_id: int) -> FinishReason | None:
        # Decodes the token (stop strings need its text), then checks every stop condition.
        hit_stop_string = seq.detokenizer is not None and seq.detokenizer.add(token_id)
        params = seq.params
        if (token_id in self.eos_token_ids and not params.ignore_eos) or token_id in params.stop_token_ids:
            return FinishReason.STOP
        if hit_stop_string:
            return FinishReason.STOP
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        # A prefill-only request keeps its blocks (its KV may still be in flight) until release.
        self.scheduler.finish(seq, reason, keep_blocks=seq.is_prefill_only)
        if not seq.is_prefill_only:
            del self._seqs[seq.request_id]

    def _text_stream(self, seq: Sequence) -> TextStream | None:
        if self.tokenizer is None:
            return None
        return TextStream(IncrementalDetokenizer(self.tokenizer, seq.prompt_token_ids), seq.params.stop)

    def _get(self, request_id: str) -> Sequence:
        seq = self._seqs.get(request_id)
        if seq is None:
            raise ValueError(f"unknown request {request_id!r}")
        return seq
