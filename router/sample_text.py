"""Turns one sample's stream of token ids into text pieces, applying stop strings.

The router detokenizes with the engine's own TextStream (the same code the workers use), so the
text a client sees, with stop strings cut and never partly streamed, is exactly what the engine
alone would produce.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tandem.api.v1 import inference_pb2
from tandem.engine.text_stream import TextStream
from tandem.engine.tokenizer import IncrementalDetokenizer

THINKING = inference_pb2.TOKEN_SECTION_THINKING
ANSWER = inference_pb2.TOKEN_SECTION_ANSWER
# The detokenizer reads only the prompt's last few (non-special) tokens: handing it a short tail
# keeps a long prompt from costing the event loop a pass over it for every sample.
PROMPT_TAIL_TOKENS = 64


@dataclass(slots=True)
class TextPiece:
    """New text of one section, with the tokens (and logprobs) that made it."""

    section: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[inference_pb2.TokenLogprob] = field(default_factory=list)


class SampleText:
    """Accumulates one sample's tokens and yields its text pieces."""

    def __init__(self, tokenizer, prompt_token_ids: list[int], stop: list[str]) -> None:
        tail = prompt_token_ids[-PROMPT_TAIL_TOKENS:]
        self._stream = TextStream(IncrementalDetokenizer(tokenizer, tail), tuple(stop))
        self._released: list[str] = []
        self._answer: list[str] = []
        self.is_stopped = False
        self.num_tokens = 0
        self.num_thinking_tokens = 0

    @property
    def text(self) -> str:
        """All text released so far."""
        return "".join(self._released)

    @property
    def answer_text(self) -> str:
        """The text released in the answer section (after any thinking)."""
        return "".join(self._answer)

    def add(self, token_ids: list[int], sections: list[int],
            logprobs: list[inference_pb2.TokenLogprob]) -> list[TextPiece]:
        """Adds tokens (with their sections and logprobs) and returns the text they release."""
        pieces: list[TextPiece] = []
        for index, token_id in enumerate(token_ids):
            if self.is_stopped:
                break
            section = sections[index] if index < len(sections) else ANSWER
            self.num_tokens += 1
            self.num_thinking_tokens += section == THINKING
            self.is_stopped = self._stream.add(token_id)
            piece = _piece_for(pieces, section)
            piece.token_ids.append(token_id)
            if index < len(logprobs):
                piece.logprobs.append(logprobs[index])
            piece.text += self._take(section, is_final=self.is_stopped)
        return pieces

    def finish(self) -> TextPiece | None:
        """Releases the held-back text at the end of the sample."""
        text = self._take(ANSWER, is_final=True)
        return TextPiece(section=ANSWER, text=text) if text else None

    def _take(self, section: int, is_final: bool) -> str:
        text = self._stream.take(is_final)
        self._released.append(text)
        if section == ANSWER:
            self._answer.append(text)
        return text


def _piece_for(pieces: list[TextPiece], section: int) -> TextPiece:
    if not pieces or pieces[-1].section != section:
        pieces.append(TextPiece(section=section))
    return pieces[-1]
