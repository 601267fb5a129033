"""Seeded arithmetic word problems of growing size, their chat prompts, and the answer extractor.

A problem starts with a count of things and applies one to three additions or subtractions of
1- to 3-digit numbers (never going below zero), phrased as a short story with a question. The
answer is checked by `extract_answer`: the last integer of the text after any thinking.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NAMES = ("Tom", "Anna", "Ben", "Maya", "Leo", "Sara", "Omar", "Lily")
ITEMS = ("apples", "pens", "stickers", "marbles", "books", "coins", "shells", "cards")
GAIN_PHRASES = ("{name} buys {n} more {item}.", "{name} finds {n} more {item}.",
                "A friend gives {name} {n} {item}.")
LOSS_PHRASES = ("{name} gives away {n} {item}.", "{name} loses {n} {item}.",
                "{name} sells {n} {item}.")
THINK_END = "</think>"
_INTEGER = re.compile(r"-?\d+")
# Three worked examples shown as earlier chat turns: they fix the answer format (a short chain of
# sums and "The answer is N."), which a 135M model does not follow from an instruction alone.
FEW_SHOT = (
    ("Kim has 4 pears. Kim buys 3 more pears. How many pears does Kim have now?",
     "4 + 3 = 7. The answer is 7."),
    ("Sam has 52 cups. Sam gives away 17 cups. A friend gives Sam 8 cups. "
     "How many cups does Sam have now?",
     "52 - 17 = 35. 35 + 8 = 43. The answer is 43."),
    ("Ada has 9 nuts. Ada finds 5 more nuts. Ada loses 6 nuts. Ada buys 2 more nuts. "
     "How many nuts does Ada have now?",
     "9 + 5 = 14. 14 - 6 = 8. 8 + 2 = 10. The answer is 10."),
)


@dataclass(slots=True, frozen=True)
class Problem:
    """One word problem, its answer and its size (operations, digits of the numbers)."""

    text: str
    answer: int
    num_ops: int
    num_digits: int

    @property
    def size(self) -> int:
        """Size level 1..9: operations and digits together."""
        return (self.num_ops - 1) * 3 + self.num_digits


def make_problem(rng: random.Random, num_ops: int, num_digits: int) -> Problem:
    """A random problem with `num_ops` steps over numbers of `num_digits` digits."""
    if not (1 <= num_ops <= 3 and 1 <= num_digits <= 3):
        raise ValueError(f"num_ops and num_digits must be in 1..3, got {num_ops}, {num_digits}")
    low, high = (2 if num_digits == 1 else 10 ** (num_digits - 1)), 10 ** num_digits - 1
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(low, high)
    sentences = [f"{name} has {total} {item}."]
    for _ in range(num_ops):
        is_loss = total >= low and rng.random() < 0.5
        amount = rng.randint(low, min(high, total)) if is_loss else rng.randint(low, high)
        phrase = rng.choice(LOSS_PHRASES if is_loss else GAIN_PHRASES)
        sentences.append(phrase.format(name=name, n=amount, item=item))
        total += -amount if is_loss else amount
    sentences.append(f"How many {item} does {name} have now?")
    return Problem(" ".join(sentences), total, num_ops, num_digits)


def make_problems(num_problems: int, seed: int, max_digits: int = 3) -> list[Problem]:
    """`num_problems` problems cycling through the sizes (1-3 operations x 1-max_digits digits)."""
    rng = random.Random(seed)
    sizes = [(ops, digits) for ops in (1, 2, 3) for digits in range(1, max_digits + 1)]
    return [make_problem(rng, *sizes[i % len(sizes)]) for i in range(num_problems)]


def chat_messages(problem: Problem) -> list[dict[str, str]]:
    """The conversation sent to the model: the worked examples, then the problem."""
    messages = []
    for question, answer in FEW_SHOT:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": problem.text}]


def extract_answer(text: str) -> int | None:
    """The last integer of the text after any thinking section, or None."""
    answer = text.rsplit(THINK_END, 1)[-1]
    numbers = _INTEGER.findall(answer)
    return int(numbers[-1]) if numbers else None
