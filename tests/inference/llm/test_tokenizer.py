"""The built-in tokenizer, chat templates, and text deltas at UTF-8 and stop boundaries."""

from __future__ import annotations

import subprocess
import sys

import pytest
from jinja2.exceptions import SecurityError
from tokenizers import Tokenizer, models

from inference.errors import InvalidInput
from inference.llm.detokenize import TextStream
from inference.llm.tokenizer import LLMTokenizer, builtin_tokenizer

TEXT = "Tokens per second: 日本語 héllo, ünïcödé and emoji 🙂 — done."


def test_builtin_tokenizer_is_the_same_in_another_process() -> None:
    code = (
        "from inference.llm.tokenizer import builtin_tokenizer as b; "
        "print(b().fingerprint(), b().vocab_size)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    tok = builtin_tokenizer()
    assert out == [tok.fingerprint(), str(tok.vocab_size)]


def test_round_trip_and_bos() -> None:
    tok = builtin_tokenizer()
    ids = tok.encode(TEXT)
    assert ids[0] == tok.bos_token_id and tok.decode(ids) == TEXT
    assert tok.encode(TEXT, add_special_tokens=False) == ids[1:]


def test_deltas_never_split_a_character() -> None:
    tok = builtin_tokenizer()
    ids = tok.encode(TEXT, add_special_tokens=False)
    assert len(ids) > len(TEXT.encode()) // 4  # multibyte characters span several tokens
    stream = TextStream(tok, [])
    deltas = [stream.push([t]) for t in ids]
    deltas.append(stream.finish())
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == TEXT
    assert sum(1 for d in deltas if d == "") > 0  # some tokens were held back


def test_stop_strings_are_held_back_across_deltas() -> None:
    tok = builtin_tokenizer()
    ids = tok.encode(TEXT, add_special_tokens=False)
    stream = TextStream(tok, [], stop=["héllo", "never appears"])
    out = ""
    for t in ids:
        out += stream.push([t])
        assert "hé" not in out  # the start of a stop string is never emitted early
        if stream.stopped:
            break
    out += stream.finish()
    assert stream.stopped and out == TEXT[: TEXT.index("héllo")]


def test_chat_templates() -> None:
    tok = builtin_tokenizer()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(msgs)
    assert text == "<|bos|><|system|>Be brief.<|eos|><|user|>Hi<|eos|><|assistant|>"
    assert tok.encode_chat(msgs)[0] == tok.bos_token_id
    assert tok.encode_chat(msgs).count(tok.bos_token_id) == 1  # no double BOS
    plain = LLMTokenizer(tok.tokenizer)  # a model with no template: the documented default
    assert plain.apply_chat_template(msgs) == "system: Be brief.\nuser: Hi\nassistant:"
    strict = LLMTokenizer(tok.tokenizer, chat_template="{{ raise_exception('no system') }}")
    with pytest.raises(InvalidInput, match="no system"):
        strict.apply_chat_template(msgs)
    for bad in ([], [{"role": "wizard", "content": "x"}], [{"role": "user", "content": 3}]):
        with pytest.raises(InvalidInput):
            tok.apply_chat_template(bad)  # type: ignore[arg-type]


def test_templates_are_sandboxed() -> None:
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    tok = LLMTokenizer(Tokenizer(models.BPE()), chat_template=evil)
    with pytest.raises(SecurityError):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_wire_round_trip() -> None:
    tok = builtin_tokenizer()
    back = LLMTokenizer.from_wire(tok.to_wire())
    assert back.fingerprint() == tok.fingerprint() and back.eos_token_ids == tok.eos_token_ids
    assert back.encode(TEXT) == tok.encode(TEXT)
