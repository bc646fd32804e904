"""Token ids in, exact text deltas out: incremental detokenization with stop strings.

A token of a byte-level BPE can end in the middle of a UTF-8 character (an emoji spans up
to four tokens), and a SentencePiece tokenizer decodes a token differently after a word
than at the start of a text. So a token is never decoded alone: :class:`TextStream` decodes
a short window of ids that starts a few tokens back (the *prefix*) and hands out only
what the new ids add to it, once that no longer ends in an incomplete character (U+FFFD).
Then the prefix moves up. This is the windowed scheme of vLLM and TGI.

Stop strings are matched on the decoded text: text that could still be the start of a
stop string is held back until the next token settles it; once one matches, the text from
it on is dropped and the sequence ends.

Key rule: the deltas of one sequence concatenate to ``tokenizer.decode(ids,
skip_special_tokens=True, clean_up_tokenization_spaces=False)`` up to the first stop
string. The clean-up of spaces (``" ."`` to ``"."``) is not applied: it rewrites text
across token boundaries, which a stream cannot take back. :meth:`TextStream.finish` checks
the whole text once against a full decode and hands out whatever the window missed.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 sequence decodes to


def _decode(tokenizer: Any, ids: list[int]) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return str(text)


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is the start of one of ``stops``."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class TextStream:
    """The text of one generated sequence, handed out as it becomes final.

    ``push(token_id)`` returns the new text that is safe to show (maybe ""); ``stopped`` is
    True once a stop string matched (then push returns nothing more); ``finish()`` returns
    the rest when the sequence ends for any other reason.
    """

    def __init__(self, tokenizer: Any, stops: tuple[str, ...] = ()):
        self._tokenizer = tokenizer
        self._stops = tuple(s for s in stops if s)
        self.ids: list[int] = []
        self._prefix_offset = 0  # window start: a few tokens before the unread ones
        self._read_offset = 0  # ids up to here are already turned into text
        self._pending = ""  # decoded, but held back while it may start a stop string
        self.emitted = ""  # everything handed out so far
        self.stopped = False

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token_id)
        window = self.ids[self._prefix_offset :]
        text = _decode(self._tokenizer, window)
        if text.endswith(REPLACEMENT):  # the next token may complete the character
            return ""
        before = _decode(self._tokenizer, self.ids[self._prefix_offset : self._read_offset])
        new = text[len(before) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        return self._release(new)

    def _release(self, new: str, *, final: bool = False) -> str:
        """Hand out ``new`` (after any pending text) up to a stop string, holding back an
        end that may start one unless this is the ``final`` text."""
        text = self._pending + new
        if self._stops:
            hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
            if hits:
                self.stopped = True
                self._pending = ""
                return self._emit(text[: min(hits)])
            keep = 0 if final else held_back(text, self._stops)
            self._pending = text[len(text) - keep :] if keep else ""
            text = text[: len(text) - keep]
        return self._emit(text)

    def _emit(self, text: str) -> str:
        self.emitted += text
        return text

    def finish(self) -> str:
        """The rest of the text when the sequence ends without a stop string: held-back
        text and an incomplete last character (decoded as U+FFFD, as a full decode does)."""
        if self.stopped:
            return ""
        full = _decode(self._tokenizer, self.ids)
        if not full.startswith(self.emitted):  # the window disagreed with a full decode
            log.warning("incremental detokenization drifted from the full decode")
            self._pending = ""
            return ""
        self._pending = ""  # it is part of the rest
        return self._release(full[len(self.emitted) :], final=True)
