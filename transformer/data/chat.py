"""Chat templates: render ``messages`` exactly as ``transformers``' ``apply_chat_template`` does, and mark
which tokens are trained on.

Rendering uses the same Jinja2 setup as ``transformers`` (a sandboxed environment with ``trim_blocks``,
``lstrip_blocks``, the ``loopcontrols`` extension, ``raise_exception``, ``strftime_now`` and a ``tojson``
filter), so a model's own ``chat_template`` produces the same text, and the text is tokenised without the
tokenizer's post-processor (the template writes its own BOS), as ``apply_chat_template`` does.

Which tokens train: assistant turn i is what the render of ``messages[:i + 1]`` adds to the render of
``messages[:i]``; from the reply's first character to the end of that addition (the reply plus its
end-of-turn tokens, so the model learns to end its turn; the role header is not trained). Character
spans map to tokens through the tokenizer's offsets.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

ROLES = ("system", "user", "assistant", "tool")

NAMED_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
        "+ message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "alpaca": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
}
# The token each named template ends a turn with (generation stops there).
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "alpaca": None}


@lru_cache(maxsize=16)
def _compile(template: str):
    from datetime import datetime

    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("chat templates need the jinja2 package: pip install 'transformer-toolkit[finetune]'") from None

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def check_template_setting(setting: str | None) -> None:
    """``data.chat_template`` names a template that exists, and jinja2 is installed (checked before any work)."""
    try:
        import jinja2  # noqa: F401
    except ImportError:
        raise ImportError("data.format instruction / chat renders chat templates with the jinja2 package: "
                          "pip install 'transformer-toolkit[finetune]'") from None
    if setting is not None and setting not in NAMED_TEMPLATES and not Path(setting).is_file():
        raise FileNotFoundError(f"data.chat_template={setting!r} is neither a named template ({', '.join(NAMED_TEMPLATES)}) "
                                f"nor an existing Jinja file")


def resolve_template(setting: str | None, tokenizer) -> tuple[str, str]:
    """-> (template text, its name for messages). ``setting``: ``data.chat_template``."""
    if setting is None:
        own = getattr(tokenizer, "chat_template", None)
        return (own, "the tokenizer's chat_template") if own else (NAMED_TEMPLATES["alpaca"], "alpaca")
    if setting in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[setting], setting
    check_template_setting(setting)
    return Path(setting).read_text(encoding="utf-8"), str(setting)


def render(template: str, messages: list[dict], *, add_generation_prompt: bool = False, tokens: dict | None = None) -> str:
    """The template's text for ``messages``; ``tokens``: ``bos_token``, ``eos_token``, ... as strings."""
    from jinja2.exceptions import TemplateError

    try:
        return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **(tokens or {}))
    except TemplateError as err:
        raise ValueError(f"the chat template failed: {err}") from None


def template_tokens(tokenizer) -> dict:
    """The special-token strings a template may use (``bos_token``, ``eos_token``, ...)."""
    tokens = {}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = tokenizer.token(name) if hasattr(tokenizer, "token") else None
        tokens[name] = value or ""
    if not tokens["eos_token"] and getattr(tokenizer, "eos_id", None) is not None and hasattr(tokenizer, "tok"):
        tokens["eos_token"] = tokenizer.tok.id_to_token(tokenizer.eos_id)
    return tokens


def trained_spans(template: str, messages: list[dict], train_on: str, tokens: dict) -> tuple[str, list[tuple[int, int]]]:
    """-> (the full rendered text, character spans whose tokens are trained on).

    Assistant turn i adds ``render(messages[:i + 1])`` minus ``render(messages[:i])``: its header, the reply,
    and the end-of-turn text. The span starts at the reply (the header is prompt, not answer) and runs to
    the end of that addition, so the end-of-turn token is learned."""
    full = render(template, messages, tokens=tokens)
    if train_on == "all":
        return full, [(0, len(full))]
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "completion":
        assistant = assistant[-1:]
    spans = []
    for i in assistant:
        history = render(template, messages[:i], tokens=tokens) if i else ""
        through = render(template, messages[: i + 1], tokens=tokens)
        if not (through.startswith(history) and full.startswith(through)):
            raise ValueError("the chat template renders earlier turns differently once later turns exist (e.g. it "
                             "rewrites past assistant replies), so trained tokens cannot be located; set "
                             "data.chat_template to chatml / llama3 / alpaca or data.train_on=all")
        added = through[len(history):]
        content = messages[i]["content"]
        start = added.find(content) if content else -1
        if start < 0:
            start = added.find(content.strip())  # templates that trim the reply
        if start < 0:
            raise ValueError("the chat template does not write assistant replies verbatim, so trained tokens cannot be "
                             "located; set data.chat_template to chatml / llama3 / alpaca or data.train_on=all")
        spans.append((len(history) + start, len(through)))
    return full, spans


def encode_chat(tokenizer, template: str, messages: list[dict], train_on: str) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and, per token, whether it is trained on."""
    tokens = template_tokens(tokenizer)
    text, spans = trained_spans(template, messages, train_on, tokens)
    if hasattr(tokenizer, "tok"):
        encoding = tokenizer.tok.encode(text, add_special_tokens=False)
        ids, offsets = encoding.ids, encoding.offsets
    else:  # char tokenizer: one token per character
        ids, offsets = tokenizer.encode(text), [(i, i + 1) for i in range(len(text))]
    trained = [any(a <= start < b for a, b in spans) for start, _ in offsets]
    return ids, trained
