"""Prompt filter: a blocklist matched on word boundaries after normalisation, with an allowlist.

"ass" in the blocklist blocks "ass" and "Ass!" but not "assassin" or "class"; an allowlisted
word is never blocked even when it matches a blocked phrase.

    >>> f = PromptFilter(["ass"], [])
    >>> f.check("an assassin"), f.check("ass hat")
    (None, "blocked term 'ass'")

Prompts and terms are normalised the same way before matching (:func:`normalise`):

* Unicode NFKC and case folding (full-width letters, ligatures, ``ＧＯＲＥ``);
* format characters removed (zero-width space and joiners inside a word: ``go\u200bre``);
* accents and other combining marks removed (``gōre``);
* every run of whitespace, ``_`` and ``-`` becomes one space (``gore_scene``, ``gore  scene``, ``gore-scene``).

A term's boundaries are letters: a digit or ``_`` next to it is a boundary (``gore2``), another
letter is not (``gorey`` is not ``gore``).

Known limits, as for every blocklist: homoglyphs from other scripts (Cyrillic ``о`` for Latin
``o``), leetspeak (``g0re``), misspellings and words split by other characters (``g.o.r.e``)
are not caught. The filter keeps honest prompts honest; it is not a content classifier.
"""

from __future__ import annotations

import re
import unicodedata

_SEPARATORS = re.compile(r"[\s_\-\u2010-\u2015\u2212]+")
_LETTER = r"[^\W\d_]"


def normalise(text: str) -> str:
    """The form prompts and terms are compared in (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in unicodedata.normalize("NFD", text)
                   if unicodedata.category(ch) not in ("Mn", "Me", "Cf"))
    return _SEPARATORS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def _pattern(phrases: list[str]) -> re.Pattern | None:
    """Any of ``phrases``, between non-letters: "ass" never inside "assassin", but "gore" in "gore2"."""
    if not phrases:
        return None
    return re.compile(rf"(?<!{_LETTER})(" + "|".join(re.escape(t) for t in phrases) + rf")(?!{_LETTER})")


class PromptFilter:
    def __init__(self, blocklist: list[str], allowlist: list[str]):
        self.terms = sorted({normalise(t) for t in blocklist if normalise(t)}, key=len, reverse=True)
        self.allow = sorted({normalise(w) for w in allowlist if normalise(w)}, key=len, reverse=True)
        self.pattern = _pattern(self.terms)
        self.allow_pattern = _pattern(self.allow)

    def check(self, prompt: str) -> str | None:
        """The reason a prompt is rejected, or None when it may be generated."""
        if self.pattern is None:
            return None
        text = normalise(prompt)
        # an allowlisted word or phrase that covers a match saves it ("kick-ass" with "ass" blocked)
        allowed = [(a.start(), a.end()) for a in self.allow_pattern.finditer(text)] if self.allow_pattern else []
        for m in self._matches(text):
            if not any(lo <= m.start() and m.end() <= hi for lo, hi in allowed):
                return f"blocked term '{m.group(1)}'"
        return None

    def _matches(self, text: str):
        """Every match of every term, overlapping ones included (a longer term must not hide a shorter)."""
        assert self.pattern is not None
        pos = 0
        while True:
            m = self.pattern.search(text, pos)
            if m is None:
                return
            yield m
            pos = m.start() + 1
