"""Batched token choice: greedy, temperature, top-k, top-p, per-request seeds and forced tokens.

Sampling draws one exponential noise vector per sampled row from that request's own generator
and takes argmax(probs / noise), which picks token i with probability probs[i]. Each row's draw
depends only on its own generator, so a seeded request makes the same tokens alone or batched;
token k of a request always uses the k-th draw of its seed (see skip_draws).

Logprobs are the log_softmax of the raw model logits (temperature 1, no top-k/top-p filter): the
model's own distribution, whatever sampling settings chose the token. Forced tokens (the
end-of-thinking delimiter under a spent budget) replace the sampled token and carry the model's
logprob for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tandem.engine.sequence import Sequence


@dataclass(slots=True)
class SampleResult:
    """Chosen tokens of one step, one entry per row."""

    token_ids: list[int]
    # Logprob of each chosen token, None for rows that did not ask for logprobs.
    logprobs: list[float | None]
    # Most likely (token_id, logprob) alternatives, most likely first; None where not asked.
    top_logprobs: list[list[tuple[int, float]] | None]


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> SampleResult:
    """Chooses one token per row of logits [n, vocab] (float32) for the n sequences, in order."""
    num_rows = len(seqs)
    sampled_rows = [i for i, seq in enumerate(seqs) if seq.params.temperature > 0.0]
    chosen = logits.argmax(dim=-1)  # [n]; greedy rows keep it
    if sampled_rows:
        chosen[sampled_rows] = _sample_rows(logits[sampled_rows], [seqs[i] for i in sampled_rows])
    token_ids = chosen.tolist()
    for i, seq in enumerate(seqs):
        if seq.forced_token_ids:
            token_ids[i] = seq.forced_token_ids[0]
    logprobs: list[float | None] = [None] * num_rows
    top_logprobs: list[list[tuple[int, float]] | None] = [None] * num_rows
    logprob_rows = [i for i, seq in enumerate(seqs) if seq.params.needs_logprobs]
    if logprob_rows:
        _fill_logprobs(logits, seqs, token_ids, logprob_rows, logprobs, top_logprobs)
    return SampleResult(token_ids, logprobs, top_logprobs)


def skip_draws(seq: Sequence, num_tokens: int, vocab_size: int) -> None:
    """Advances seq's generator past num_tokens sampled tokens (one noise vector each), so that its
    next token is drawn as token num_tokens of any request with that seed: a request continued
    elsewhere, or forked, goes on exactly as if it had sampled its earlier tokens itself."""
    if seq.params.temperature == 0.0 or num_tokens == 0:
        return
    generator = seq.generator
    noise = torch.empty(vocab_size, device=generator.device)
    for _ in range(num_tokens):
        noise.exponential_(generator=generator)


def _sample_rows(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    # logits: [m, vocab] of the rows that sample; returns [m] token ids.
    temperatures = torch.tensor([seq.params.temperature for seq in seqs], dtype=logits.dtype,
                                device=logits.device)
    scaled = logits / temperatures.unsqueeze(1)
    top_ks = [seq.params.top_k for seq in seqs]
    top_ps = [seq.params.top_p for seq in seqs]
    if any(k > 0 for k in top_ks) or any(p < 1.0 for p in top_ps):
        scaled = _filter_top_k_top_p(scaled, top_ks, top_ps)
    probs = torch.softmax(scaled, dim=-1)
    noise = torch.empty_like(probs)
    for row, seq in enumerate(seqs):
        noise[row].exponential_(generator=seq.generator)
    return probs.div_(noise).argmax(dim=-1)


def _filter_top_k_top_p(scaled: torch.Tensor, top_ks: list[int], top_ps: list[float]) -> torch.Tensor:
    # Top-k first, then top-p over what is left (renormalised), as in vLLM and transformers.
    sorted_logits, sorted_ids = scaled.sort(dim=-1, descending=True)  # [m, vocab] each
    vocab_size = scaled.shape[-1]
    ranks = torch.arange(vocab_size, device=scaled.device).unsqueeze(0)
    ks = torch.tensor([k if 0 < k < vocab_size else vocab_size for k in top_ks], device=scaled.device)
    sorted_logits = sorted_logits.masked_fill(ranks >= ks.unsqueeze(1), float("-inf"))
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    ps = torch.tensor(top_ps, dtype=scaled.dtype, device=scaled.device).unsqueeze(1)
    # The most likely token always stays; a token goes once the tokens above it reach top_p.
    drop = (mass_before >= ps) & (ranks > 0)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(scaled, float("-inf")).scatter_(1, sorted_ids, sorted_logits)


def _fill_logprobs(logits: torch.Tensor, seqs: list[Sequence], token_ids: list[int], rows: list[int],
                   logprobs: list, top_logprobs: list) -> None:
    row_logprobs = torch.log_softmax(logits[rows], dim=-1)  # [r, vocab] from the raw logits
    chosen = torch.tensor([token_ids[i] for i in rows], device=logits.device).unsqueeze(1)
    chosen_logprobs = row_logprobs.gather(1, chosen).squeeze(1).tolist()
    max_top = max(seqs[i].params.top_logprobs for i in rows)
    if max_top > 0:
        top_values, top_ids = row_logprobs.topk(max_top, dim=-1)
        top_values, top_ids = top_values.tolist(), top_ids.tolist()
    for j, i in enumerate(rows):
        logprobs[i] = chosen_logprobs[j]
        num_top = seqs[i].params.top_logprobs
        if num_top > 0:
            top_logprobs[i] = list(zip(top_ids[j][:num_top], top_values[j][:num_top]))
        elif seqs[i].params.logprobs:
            top_logprobs[i] = []
