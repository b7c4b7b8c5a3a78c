"""Tokenizers: the built-in one, a Hugging Face `tokenizer.json`, chat templates,
and incremental detokenization. Torch-free, so the API process and a router can
tokenize (and hash prefixes) without loading a model.

The built-in tokenizer is a byte-level BPE that the `tokenizers` package trains
on the text in `_corpus.py`. Its trainer breaks ties between equally frequent
pairs by the pair itself, so the same corpus, vocabulary size and special
tokens give the same merges in every process and on every machine
(`fingerprint()` pins it in the tests).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import InvalidInput
from ._corpus import CORPUS

BUILTIN_SPECIALS = ("<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>")

#: The built-in model's chat template: a role tag, the content, then the end tag.
BUILTIN_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

#: Used when a model ships no chat template: one "role: content" line per message,
#: then "assistant:" to prompt the reply. Plain text, so it works with any vocabulary.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

_ROLES = ("system", "user", "assistant", "tool", "developer")


class LLMTokenizer:
    """A `tokenizers.Tokenizer` plus what serving needs around it."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        eos_token_ids: Sequence[int] = (),
        chat_template: str | None = None,
        add_bos: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.bos_token = bos_token
        self.eos_token = eos_token
        ids = list(eos_token_ids)
        if eos_token is not None and (tid := tokenizer.token_to_id(eos_token)) is not None:
            ids.append(tid)
        self.eos_token_ids: tuple[int, ...] = tuple(sorted(set(ids)))
        self.chat_template = chat_template
        self.add_bos = add_bos  # prepend BOS on encode (when the post-processor does not)
        self.bos_token_id = tokenizer.token_to_id(bos_token) if bos_token else None

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        if (
            add_special_tokens
            and self.add_bos
            and self.bos_token_id is not None
            and (not ids or ids[0] != self.bos_token_id)
        ):
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """Render OpenAI-style messages with the model's Jinja template, or the
        plain DEFAULT_CHAT_TEMPLATE when it has none. Raises InvalidInput for
        malformed messages or a template that rejects them."""
        if not isinstance(messages, Sequence) or not messages:
            raise InvalidInput("messages must be a non-empty list")
        for m in messages:
            if not isinstance(m, Mapping) or m.get("role") not in _ROLES:
                raise InvalidInput(f"each message needs a role in {_ROLES}")
            if not isinstance(m.get("content"), str):
                raise InvalidInput("each message needs string content")
        template = _compile(self.chat_template or DEFAULT_CHAT_TEMPLATE)
        try:
            return str(
                template.render(
                    messages=[dict(m) for m in messages],
                    add_generation_prompt=add_generation_prompt,
                    bos_token=self.bos_token or "",
                    eos_token=self.eos_token or "",
                )
            )
        except _TemplateRaised as e:
            raise InvalidInput(f"chat template: {e}") from None

    def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Token ids of the rendered chat. The template writes BOS itself, so no
        special tokens are added (as Hugging Face's apply_chat_template does)."""
        return self.encode(self.apply_chat_template(messages), add_special_tokens=False)

    def fingerprint(self) -> str:
        """A digest of the vocabulary, merges and template: equal means equal token ids."""
        blob = self.tokenizer.to_str() + "\0" + (self.chat_template or "")
        return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()

    # -- crossing a process boundary ----------------------------------------

    def to_wire(self) -> dict[str, Any]:
        return {
            "json": self.tokenizer.to_str(),
            "bos": self.bos_token,
            "eos": self.eos_token,
            "eos_ids": list(self.eos_token_ids),
            "template": self.chat_template,
            "add_bos": self.add_bos,
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> LLMTokenizer:
        return cls(
            Tokenizer.from_str(d["json"]),
            bos_token=d["bos"],
            eos_token=d["eos"],
            eos_token_ids=d["eos_ids"],
            chat_template=d["template"],
            add_bos=d["add_bos"],
        )


class _TemplateRaised(Exception):
    """A chat template called raise_exception()."""


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    # Hugging Face renders chat templates in a sandbox with these settings and
    # helpers; a template from a model directory is data, not trusted code.
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise _TemplateRaised(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


@functools.lru_cache(maxsize=4)
def builtin_tokenizer(vocab_size: int = 1024) -> LLMTokenizer:
    """The built-in byte-level BPE (same merges everywhere; see the module docstring)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(BUILTIN_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    return LLMTokenizer(
        tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        chat_template=BUILTIN_CHAT_TEMPLATE,
        add_bos=True,
    )


def load_hf_tokenizer(path: Path, config: Mapping[str, Any] | None = None) -> LLMTokenizer:
    """`tokenizer.json` (required) and `tokenizer_config.json` (optional) from a
    Hugging Face-style directory; `config` is its config.json, for eos_token_id."""
    tok_file = path / "tokenizer.json"
    if not tok_file.is_file():
        raise FileNotFoundError(f"{tok_file} does not exist (a tokenizer.json is required)")
    tok = Tokenizer.from_file(str(tok_file))
    meta: dict[str, Any] = {}
    meta_file = path / "tokenizer_config.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
    eos_ids: list[int] = []
    for source in (config or {}, _read_json(path / "generation_config.json")):
        eid = source.get("eos_token_id")
        eos_ids += eid if isinstance(eid, list) else [eid] if isinstance(eid, int) else []
    template = meta.get("chat_template")
    if isinstance(template, list):  # the named-templates form: take "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    jinja_file = path / "chat_template.jinja"  # newer transformers save it apart
    if template is None and jinja_file.is_file():
        template = jinja_file.read_text()
    bos = _token_text(meta.get("bos_token"))
    # A tokenizer.json post-processor (TemplateProcessing) usually adds BOS itself;
    # add_bos_token in tokenizer_config.json asks for it when it does not.
    return LLMTokenizer(
        tok,
        bos_token=bos,
        eos_token=_token_text(meta.get("eos_token")),
        eos_token_ids=eos_ids,
        chat_template=template if isinstance(template, str) else None,
        add_bos=bool(meta.get("add_bos_token", False)),
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _token_text(tok: Any) -> str | None:
    if isinstance(tok, dict):  # the AddedToken form {"content": ...}
        tok = tok.get("content")
    return tok if isinstance(tok, str) else None
