"""Prompt filter: a blocklist matched on word boundaries, with an allowlist.

"ass" in the blocklist blocks "ass" and "Ass!" but not "assassin" or "class"; an allowlisted
word is never blocked even when it matches a blocked phrase.

    >>> f = PromptFilter(["ass"], [])
    >>> f.check("an assassin"), f.check("ass hat")
    (None, "blocked term 'ass'")
"""

from __future__ import annotations

import re
import unicodedata


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


class PromptFilter:
    def __init__(self, blocklist: list[str], allowlist: list[str]):
        self.terms = sorted({_norm(t).strip() for t in blocklist if t.strip()}, key=len, reverse=True)
        self.allow = {_norm(w).strip() for w in allowlist if w.strip()}
        # \b on both sides: a term matches whole words only ("ass" never inside "assassin").
        self.pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(t) for t in self.terms) + r")(?!\w)") if self.terms else None

    def check(self, prompt: str) -> str | None:
        """The reason a prompt is rejected, or None when it may be generated."""
        if self.pattern is None:
            return None
        text = _norm(prompt)
        for m in self.pattern.finditer(text):
            if m.group(1) in self.allow:
                continue
            # an allowlisted word that contains the match (e.g. a phrase) also saves it
            start = text.rfind(" ", 0, m.start()) + 1
            end = text.find(" ", m.end())
            word = text[start:end if end != -1 else len(text)].strip(".,;:!?\"'()[]")
            if word in self.allow:
                continue
            return f"blocked term '{m.group(1)}'"
        return None
