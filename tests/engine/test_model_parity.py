"""The paged model against Hugging Face transformers on the same weights: logits and KV cache.

Each step's AttentionMetadata is built by hand, with every sequence's blocks scattered over the
cache (not consecutive, not in order), so that block tables and slot mapping are really used.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from tandem.engine.attention_metadata import AttentionMetadata
from tandem.engine.kv_cache import allocate_kv_cache
from tandem.engine.weights import load_model

torch.set_num_threads(1)

BLOCK_SIZE = 4
NUM_BLOCKS = 40
FLOAT32_ATOL = 1e-4
# bf16 keeps about 3 significant digits and the logits here reach about 10, so one rounding step
# of a logit is up to 0.06; the paged path may round a few steps differently from HF's bf16 run.
BF16_ATOL = 0.2
# Full token sequences; the steps below run them in pieces.
SEQUENCES = {
    "a": [11, 52, 73, 94, 15, 216, 317, 418, 19, 120, 221, 322, 23],
    "b": [301, 302, 3, 304, 305, 6, 307, 308, 9, 310, 311, 12, 313, 414, 515],
    "c": [600, 599, 598, 97, 96, 95, 94, 93, 92, 91, 90, 89, 88, 87],
    "d": [5, 6, 7, 8, 9, 10, 1000],
}
# Step (a): a batched prefill of three prompts of different lengths.
PREFILL = {"a": 5, "b": 13, "c": 9}
# Step (b): chunked continuations over cached prefixes (a, c), one decode (b), a fresh prompt (d).
CONTINUE = {"a": 12, "b": 14, "c": 13, "d": 6}
# Step (c): one decode token for every sequence.
DECODE = {"a": 13, "b": 15, "c": 14, "d": 7}


class PagedRun:
    """Runs sequences through the model step by step, keeping their block tables."""

    def __init__(self, model, dtype: torch.dtype) -> None:
        self.model = model
        spec = model.config.kv_cache_spec(NUM_BLOCKS, BLOCK_SIZE, dtype)
        self.kv_cache = allocate_kv_cache(spec)
        # Hand out blocks in a scrambled order, so that no sequence gets consecutive ids.
        self.free_blocks = torch.randperm(NUM_BLOCKS - 1, generator=torch.Generator().manual_seed(0)).add(1).tolist()
        self.block_tables: dict[str, list[int]] = {}
        self.num_computed: dict[str, int] = {}

    def metadata(self, targets: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """input_ids, positions and metadata that take each sequence up to targets[name] tokens."""
        input_ids, positions, slots, query_lens, context_lens = [], [], [], [], []
        for name, end in targets.items():
            start = self.num_computed.get(name, 0)
            table = self.block_tables.setdefault(name, [])
            while len(table) * BLOCK_SIZE < end:
                table.append(self.free_blocks.pop())
            input_ids += SEQUENCES[name][start:end]
            positions += range(start, end)
            slots += [table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(start, end)]
            query_lens.append(end - start)
            context_lens.append(end)
            self.num_computed[name] = end
        width = max(len(self.block_tables[name]) for name in targets)
        tables = [self.block_tables[name] + [0] * (width - len(self.block_tables[name])) for name in targets]
        attn = AttentionMetadata(query_lens=query_lens, context_lens=torch.tensor(context_lens),
                                 block_tables=torch.tensor(tables), slot_mapping=torch.tensor(slots))
        return torch.tensor(input_ids), torch.tensor(positions), attn

    def step(self, targets: dict[str, int], on_layer_done=None) -> dict[str, torch.Tensor]:
        """Runs one step; returns each sequence's logits [query_len, vocab] for its new tokens."""
        starts = {name: self.num_computed.get(name, 0) for name in targets}
        input_ids, positions, attn = self.metadata(targets)
        hidden = self.model(input_ids, positions, self.kv_cache, attn, on_layer_done=on_layer_done)
        logits = self.model.compute_logits(hidden)
        out, offset = {}, 0
        for name, end in targets.items():
            out[name] = logits[offset:offset + end - starts[name]]
            offset += end - starts[name]
        return out

    def cached_kv(self, name: str, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V [num_computed, Hkv, D] of one sequence in one layer, read back from the blocks."""
        layer = self.kv_cache[layer_idx]  # [N, 2, B, Hkv, D]
        blocks = layer[torch.tensor(self.block_tables[name])]  # [n, 2, B, Hkv, D]
        keys = blocks[:, 0].flatten(0, 1)[:self.num_computed[name]]
        values = blocks[:, 1].flatten(0, 1)[:self.num_computed[name]]
        return keys, values


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request):
    return request.getfixturevalue(f"tiny_{request.param}_dir")


@pytest.fixture(scope="module")
def reference(model_dir):
    """HF logits [len, vocab] and past key/values per sequence, each run alone in float32."""
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    results = {}
    with torch.inference_mode():
        for name, tokens in SEQUENCES.items():
            out = hf_model(torch.tensor([tokens]), use_cache=True)
            kv = [(layer.keys[0].transpose(0, 1), layer.values[0].transpose(0, 1))  # [T, Hkv, D]
                  for layer in out.past_key_values.layers]
            results[name] = (out.logits[0].float(), kv)
    return results


def run_three_steps(run: PagedRun) -> list[dict[str, torch.Tensor]]:
    return [run.step(PREFILL), run.step(CONTINUE), run.step(DECODE)]


def expected_logits(reference, steps: list[dict[str, int]]) -> list[dict[str, torch.Tensor]]:
    expected, done = [], {}
    for targets in steps:
        expected.append({name: reference[name][0][done.get(name, 0):end] for name, end in targets.items()})
        done.update(targets)
    return expected


def test_float32_logits_equal_transformers_through_prefill_continuation_and_decode(model_dir, reference):
    model, config = load_model(model_dir, dtype=torch.float32)
    run = PagedRun(model, torch.float32)
    got = run_three_steps(run)
    want = expected_logits(reference, [PREFILL, CONTINUE, DECODE])
    for step_idx, (got_step, want_step) in enumerate(zip(got, want)):
        for name in want_step:
            assert got_step[name].shape == want_step[name].shape
            torch.testing.assert_close(got_step[name], want_step[name], atol=FLOAT32_ATOL, rtol=0,
                                       msg=lambda m: f"step {step_idx}, sequence {name}: {m}")
    # The cache holds exactly HF's (rotated) keys and values for every token of every sequence.
    for name in SEQUENCES:
        for layer_idx in range(config.num_hidden_layers):
            keys, values = run.cached_kv(name, layer_idx)
            hf_keys, hf_values = reference[name][1][layer_idx]
            torch.testing.assert_close(keys, hf_keys, atol=FLOAT32_ATOL, rtol=0)
            torch.testing.assert_close(values, hf_values, atol=FLOAT32_ATOL, rtol=0)


def test_bfloat16_stays_as_close_to_float32_as_transformers_in_bfloat16(model_dir, reference):
    model, _ = load_model(model_dir, dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16
    hf_bf16 = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    with torch.inference_mode():
        hf_bf16_logits = {name: hf_bf16(torch.tensor([tokens])).logits[0].float()
                          for name, tokens in SEQUENCES.items()}
    run = PagedRun(model, torch.bfloat16)
    got = run_three_steps(run)
    want = expected_logits(reference, [PREFILL, CONTINUE, DECODE])
    want_bf16 = expected_logits({name: (logits,) for name, logits in hf_bf16_logits.items()},
                                [PREFILL, CONTINUE, DECODE])
    for got_step, want_step, bf16_step in zip(got, want, want_bf16):
        for name in want_step:
            assert got_step[name].dtype == torch.float32
            torch.testing.assert_close(got_step[name], bf16_step[name], atol=BF16_ATOL, rtol=0)
            # The error against float32 is bf16's own, not more: within 1.5x of HF's bf16 error.
            error = (got_step[name] - want_step[name]).abs().max()
            hf_error = (bf16_step[name] - want_step[name]).abs().max()
            assert error <= 1.5 * hf_error + 0.05, f"{name}: bf16 error {error:.3f}, HF's {hf_error:.3f}"


def test_each_layer_reports_once_in_order_after_its_kv_is_written(model_dir, reference):
    model, config = load_model(model_dir, dtype=torch.float32)
    run = PagedRun(model, torch.float32)
    input_ids, positions, attn = run.metadata(PREFILL)
    slots = attn.slot_mapping
    seen: list[int] = []

    def slot_keys(layer_idx: int) -> torch.Tensor:  # [T, Hkv, D] keys at this step's slots
        return run.kv_cache[layer_idx, :, 0].flatten(0, 1)[slots].clone()

    def on_layer_done(layer_idx: int) -> None:
        seen.append(layer_idx)
        assert slot_keys(layer_idx).abs().sum() > 0, f"layer {layer_idx} reported before its KV was written"
        for later in range(layer_idx + 1, config.num_hidden_layers):
            assert slot_keys(later).abs().sum() == 0, f"layer {later} written before layer {layer_idx} reported"
        snapshots[layer_idx] = slot_keys(layer_idx)

    snapshots: dict[int, torch.Tensor] = {}
    model(input_ids, positions, run.kv_cache, attn, on_layer_done=on_layer_done)
    assert seen == list(range(config.num_hidden_layers))
    for layer_idx, snapshot in snapshots.items():
        assert torch.equal(snapshot, slot_keys(layer_idx)), "a layer's KV changed after it was reported"
    hf_first_keys = torch.cat([reference[name][1][0][0][:end] for name, end in PREFILL.items()])
    torch.testing.assert_close(snapshots[0], hf_first_keys, atol=FLOAT32_ATOL, rtol=0)


def test_metadata_that_does_not_fit_is_refused(model_dir):
    model, _ = load_model(model_dir, dtype=torch.float32)
    run = PagedRun(model, torch.float32)
    input_ids, positions, attn = run.metadata(PREFILL)
    with pytest.raises(ValueError, match="covers 27 tokens, input_ids has 26"):
        model(input_ids[:-1], positions[:-1], run.kv_cache, attn)
    attn.context_lens[0] = 99
    with pytest.raises(ValueError, match="sequence 0"):
        model(input_ids, positions, run.kv_cache, attn)
    with pytest.raises(ValueError, match="kv_cache shape"):
        model(input_ids, positions, run.kv_cache[:, :, :1], attn)
