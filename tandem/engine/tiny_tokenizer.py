"""A byte-level BPE tokenizer trained in-process on a small English corpus, for the tiny test models.

Two flavours mirror real checkpoints: "llama" (Llama 3 header tokens, BOS added on encode) and
"qwen2" (ChatML tokens, no BOS). Both have <think> and </think> as ordinary added tokens (kept by
skip_special_tokens, as in Qwen3) and a chat template that honours `enable_thinking`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

THINK_TOKENS = ("<think>", "</think>")

_THINKING_OFF = (
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
)
_CHECK_ROLE = (
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{- raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif %}"
)
LLAMA_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}" + _CHECK_ROLE +
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}" + _THINKING_OFF +
    "{%- endif %}"
)
QWEN2_CHAT_TEMPLATE = (
    "{%- for message in messages %}" + _CHECK_ROLE +
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}" + _THINKING_OFF +
    "{%- endif %}"
)


@dataclass(slots=True, frozen=True)
class TokenizerFlavour:
    """Special tokens and template of one tokenizer family."""

    special_tokens: tuple[str, ...]
    bos_token: str | None
    eos_token: str  # the chat turn terminator
    end_of_text_token: str
    chat_template: str


FLAVOURS = {
    "llama": TokenizerFlavour(
        special_tokens=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>"),
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", end_of_text_token="<|end_of_text|>",
        chat_template=LLAMA_CHAT_TEMPLATE,
    ),
    "qwen2": TokenizerFlavour(
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos_token=None, eos_token="<|im_end|>", end_of_text_token="<|endoftext|>",
        chat_template=QWEN2_CHAT_TEMPLATE,
    ),
}

CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model can still learn how words are built.
Once upon a time there was a little town by the sea. Every morning the fishermen went out in
their boats, and every evening they came back with baskets full of fish. The children ran along
the beach, looking for shells and watching the waves roll in from the open water.
Machine learning is the study of computer programs that improve with experience. A language model
predicts the next word in a sentence. Large language models are trained on a great deal of text,
and they can answer questions, write stories, translate between languages and solve problems.
Serving a model means running it for many users at once. The prompt is processed first; this is
called prefill. Then the model writes one token at a time; this is called decode. Prefill is
limited by compute, while decode is limited by memory bandwidth, so the two phases can run on
different machines. The key and value cache of each request moves from one machine to the other.
What is the capital of France? The capital of France is Paris. What is two plus two? Two plus two
is four. How many days are there in a week? There are seven days in a week: Monday, Tuesday,
Wednesday, Thursday, Friday, Saturday and Sunday. The months of the year are January, February,
March, April, May, June, July, August, September, October, November and December.
Let me think step by step. First, we read the question carefully. Next, we write down what we
know. Then we look for a rule that connects the facts. Finally, we check the answer and explain
it in plain words. If the answer does not fit, we go back and try another way.
The weather today is sunny with a light breeze. Tomorrow it may rain in the afternoon, so take an
umbrella. In winter the nights are long and cold; in summer the days are warm and bright.
Water boils at one hundred degrees Celsius at sea level. The Earth goes around the Sun once a
year, and the Moon goes around the Earth about once a month. Light from the Sun takes about eight
minutes to reach us. Plants turn sunlight, water and air into sugar and oxygen.
She opened the old book and began to read aloud. The story was about a brave girl who crossed the
mountains to find her brother. Along the way she met a talking bird, a kind old woman and a
wolf who was not as fierce as he looked. In the end they all became friends.
Numbers: zero, one, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, twenty,
thirty, forty, fifty, hundred, thousand, million. 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14.
Please write a short poem about the ocean. Sure! Here is a short poem: The ocean hums a quiet
song, the tide is slow, the night is long; the stars lean down to touch the foam, and every wave
is finding home.
Code: def add(a, b): return a + b. for i in range(10): print(i). if x > 0 and y < 0: swap(x, y).
Thank you for your help! You are welcome. Good morning, how are you? I am fine, thanks. Goodbye.
"""


def train_tokenizer(flavour_name: str, vocab_size: int = 2048) -> Tokenizer:
    """Trains a byte-level BPE on CORPUS with the flavour's special tokens and <think> tokens."""
    flavour = FLAVOURS[flavour_name]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, show_progress=False,
        special_tokens=list(flavour.special_tokens), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in THINK_TOKENS])
    if flavour.bos_token is not None:
        bos = (flavour.bos_token, tokenizer.token_to_id(flavour.bos_token))
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B", special_tokens=[bos],
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def write_tokenizer(out_dir: Path, flavour_name: str, max_length: int) -> Tokenizer:
    """Writes tokenizer.json and tokenizer_config.json (with the chat template) into out_dir."""
    flavour = FLAVOURS[flavour_name]
    tokenizer = train_tokenizer(flavour_name)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": flavour.bos_token,
        "eos_token": flavour.eos_token,
        "pad_token": flavour.end_of_text_token,
        "add_bos_token": flavour.bos_token is not None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "chat_template": flavour.chat_template,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return tokenizer
