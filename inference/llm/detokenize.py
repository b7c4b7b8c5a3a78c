"""Token ids to text deltas, one step at a time, safe at UTF-8 and stop-string boundaries.

A byte-level token may hold part of a UTF-8 character, so the text of the
tokens so far can end in U+FFFD until the next token completes it. The rule
(Hugging Face text-generation-inference's, also vLLM's): decode a short window
of recent tokens twice, with and without the new ones, and emit the
difference only when it does not end in U+FFFD. The window starts a few
prompt tokens back so that tokenizers which drop a leading space when decoding
a sequence's first token (SentencePiece) still produce it.

Stop strings: the last `len(longest stop) - 1` characters are held back until
more text shows that no stop string starts there; text from the first stop
string on is never emitted (OpenAI's semantics).
"""

from __future__ import annotations

from collections.abc import Sequence

from .tokenizer import LLMTokenizer

_CONTEXT_TOKENS = 5  # prompt tokens decoded with the output, for leading spaces


class IncrementalDetokenizer:
    def __init__(self, tokenizer: LLMTokenizer, prompt_ids: Sequence[int]) -> None:
        self._tok = tokenizer
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix = 0  # window start
        self._read = len(self._ids)  # tokens before this are already emitted

    def push(self, token_ids: Sequence[int]) -> str:
        self._ids.extend(token_ids)
        before = self._tok.decode(self._ids[self._prefix : self._read])
        after = self._tok.decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            delta = after[len(before) :]
            # Keep the window short: drop the tokens before the new window start.
            del self._ids[: self._read]
            self._prefix, self._read = 0, len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is held back (an incomplete character decodes as U+FFFD)."""
        before = self._tok.decode(self._ids[self._prefix : self._read])
        after = self._tok.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :] if len(after) > len(before) else ""


class TextStream:
    """One request's output text: detokenization plus stop strings."""

    def __init__(
        self, tokenizer: LLMTokenizer, prompt_ids: Sequence[int], stop: Sequence[str] = ()
    ) -> None:
        self._detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self._stop = tuple(stop)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._pending = ""  # decoded, not yet emitted
        self.stopped = False

    def push(self, token_ids: Sequence[int]) -> str:
        """The text delta these tokens make safe to emit; sets `stopped` on a stop string."""
        self._pending += self._detok.push(token_ids)
        if self._cut_at_stop():
            return self._take(len(self._pending))
        return self._take(len(self._pending) - self._hold)

    def finish(self) -> str:
        """The rest of the text, once the request ends."""
        if not self.stopped:
            self._pending += self._detok.flush()
            self._cut_at_stop()
        return self._take(len(self._pending))

    def _cut_at_stop(self) -> bool:
        if not self._stop or self.stopped:
            return self.stopped
        hits = [i for i in (self._pending.find(s) for s in self._stop) if i >= 0]
        if hits:
            self._pending = self._pending[: min(hits)]
            self.stopped = True
        return self.stopped

    def _take(self, n: int) -> str:
        if n <= 0:
            return ""
        out, self._pending = self._pending[:n], self._pending[n:]
        return out
