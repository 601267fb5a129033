"""Renders Hugging Face chat templates (Jinja) the way `transformers` does, in a sandbox.

Templates come from model folders downloaded from anywhere, so they run in jinja2's immutable
sandbox with the globals and filters HF templates rely on: `raise_exception`, `strftime_now`, a
`tojson` that keeps non-ASCII text, the loop controls and a `{% generation %}` block.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_FILE = "chat_template.jinja"


class _GenerationBlock(jinja2.ext.Extension):
    # HF marks assistant text with {% generation %}...{% endgeneration %} for training masks;
    # rendering only needs the body.
    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters, which chat templates must not do.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    """Compiles a chat template in the sandbox; raises ValueError when it is not valid Jinja."""
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    try:
        return environment.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as error:
        raise ValueError(f"chat template is not valid Jinja (line {error.lineno}): {error.message}") from None


def render_template(source: str, messages: list[dict[str, Any]], add_generation_prompt: bool,
                    special_tokens: dict[str, str], extra: dict[str, Any]) -> str:
    """Renders messages with the template; template errors become ValueError with their message."""
    _check_messages(messages)
    template = compile_template(source)
    try:
        return template.render(messages=messages, tools=None, documents=None,
                               add_generation_prompt=add_generation_prompt, **special_tokens, **extra)
    except jinja2.exceptions.TemplateError as error:
        raise ValueError(f"chat template refused the conversation: {error}") from None


def _check_messages(messages: list[dict[str, Any]]) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"messages[{index}] must be an object with a string 'role', got {message!r}")


def find_template(model_dir: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The folder's chat template: chat_template.jinja if present, else tokenizer_config's entry."""
    template_path = model_dir / TEMPLATE_FILE
    if template_path.is_file():
        return template_path.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    # A list of named templates: the one named "default" is the chat template.
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise ValueError(
        f"tokenizer_config.json in {model_dir} has a chat_template that is neither a string nor a list "
        "holding one named 'default'"
    )
