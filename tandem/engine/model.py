"""The Llama-family decoder (Llama 2/3, Qwen2, Mistral) over a paged KV cache, with HF weight names.

Shapes: T new tokens in the step (all sequences flattened), H query heads, Hkv KV heads, D head
dim, L layers. The model keeps no per-request state: the runtime passes the KV cache and the
step's AttentionMetadata to every forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tandem.engine.attention_metadata import AttentionMetadata
from tandem.engine.model_config import ModelConfig
from tandem.engine.paged_attention import AttentionPlan, Workspace, build_plan, paged_attention, write_kv
from tandem.engine.rope import RotaryEmbedding, apply_rotary


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 as HF does."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalises x [..., hidden]."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    """GQA self-attention with rotary positions, reading and writing the paged cache."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_size, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=config.o_proj_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_layer: torch.Tensor,
                plan: AttentionPlan, workspace: Workspace, on_kv_written: Callable[[], None]) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]; writes this layer's K/V into kv_layer [N, 2, B, Hkv, D] first."""
        num_tokens = x.shape[0]
        q = self.q_proj(x).view(num_tokens, self.num_heads, self.head_dim)  # [T, H, D]
        k = self.k_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = self.v_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        write_kv(kv_layer, k, v, plan)
        on_kv_written()
        out = paged_attention(q, k, v, kv_layer, plan, workspace)  # [T, H, D]
        return self.o_proj(out.reshape(num_tokens, -1))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm attention block then pre-norm MLP block, each with a residual."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_layer: torch.Tensor,
                plan: AttentionPlan, workspace: Workspace, on_kv_written: Callable[[], None]) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_layer, plan, workspace, on_kv_written)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Embedding, decoder layers and the final norm (HF's `model.` prefix)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """The whole decoder plus LM head; parameter names match HF checkpoints exactly."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(config)
        self.workspace = Workspace()
        self.tie_weights()

    def tie_weights(self) -> None:
        """Shares the embedding matrix with the LM head when the config ties them."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                attn: AttentionMetadata, on_layer_done: Callable[[int], None] | None = None) -> torch.Tensor:
        """Runs one step: input_ids/positions [T] -> hidden [T, hidden] after the final norm.

        kv_cache is [L, N, 2, B, Hkv, D]. Each layer writes the new tokens' K/V at
        attn.slot_mapping, then calls on_layer_done(layer_idx) (its KV is in the cache from then on),
        then attends over each sequence's paged context.
        """
        self._check_inputs(input_ids, positions, kv_cache)
        plan = build_plan(attn, block_size=kv_cache.shape[3], device=kv_cache.device)
        if plan.num_tokens != input_ids.numel():
            raise ValueError(f"attention metadata covers {plan.num_tokens} tokens, input_ids has {input_ids.numel()}")
        x = self.model.embed_tokens(input_ids)  # [T, hidden]
        cos, sin = self.rotary.cos_sin(positions, x.dtype)  # [T, D/2] each
        for layer_idx, layer in enumerate(self.model.layers):
            on_kv_written = _do_nothing if on_layer_done is None else functools.partial(on_layer_done, layer_idx)
            x = layer(x, cos, sin, kv_cache[layer_idx], plan, self.workspace, on_kv_written)
        return self.model.norm(x)

    @torch.no_grad()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [n, hidden] -> logits [n, vocab] float32."""
        return self.lm_head(hidden).float()

    def _check_inputs(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor) -> None:
        config = self.config
        if input_ids.dim() != 1 or positions.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and positions must be 1-D of equal length, got {tuple(input_ids.shape)} and "
                f"{tuple(positions.shape)}"
            )
        expected = (config.num_hidden_layers, config.num_key_value_heads, config.head_dim)
        got = (kv_cache.shape[0], kv_cache.shape[4], kv_cache.shape[5]) if kv_cache.dim() == 6 else None
        if got != expected or kv_cache.shape[2] != 2:
            raise ValueError(
                f"kv_cache shape {tuple(kv_cache.shape)} does not fit the model: expected "
                f"[{expected[0]}, num_blocks, 2, block_size, {expected[1]}, {expected[2]}]"
            )


def _do_nothing() -> None:
    return None
