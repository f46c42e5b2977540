"""Multiple-choice answers: the option letter a model meant, from "B", "(B)", "The answer
is (B).", "<answer>b</answer>", "Option C: red", or the option's own text."""

from __future__ import annotations

import re
from collections.abc import Sequence

from magsrl.proto.prompts import OPTION_LETTERS, option_texts
from magsrl.zoom.parsing import extract_answer

__all__ = ["normalize_choice"]

_NUMBER_WORDS = (
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen"),
    *("eighteen", "nineteen", "twenty"),
)
_NUMBER_WORD_RE = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b")
# A bare letter reply: "B", "(B)", "[b]", "B.", "B)".
_BARE_LETTER = re.compile(r"^[(\[]?\s*([a-z])\s*[)\]]?\s*[.:)]?$", re.IGNORECASE)
# A reply that opens with a label and goes on: "(B) red", "B. red", "Option C: red".
_LEADING_LABEL = re.compile(
    r"^(?:(?:option|choice)\s+)?(?:[(\[]([a-z])[)\]]|([a-z])[.:)])\s*(.*)$|"
    r"^(?:option|choice)\s+([a-z])\b\s*(.*)$",
    re.IGNORECASE | re.DOTALL,
)
# "the answer is (B)", "answer: b", "the correct option is C."; an unbracketed letter must
# end the phrase (or be a capital before a word) so "the answer is a cat" names no letter.
_ANSWER_PHRASE = re.compile(
    r"\b(?:answer|option|choice)\b(?:\s+(?:is|would be|should be))?\s*:?\s*"
    r"(?:[(\[]([a-z])[)\]]|([a-z])(?=\s*$|[.,;:!?)])|(?-i:([A-Z]))(?=\s))",
    re.IGNORECASE,
)
_BRACKETED_LETTER = re.compile(r"[(\[]([a-z])[)\]]", re.IGNORECASE)
# A capital letter standing alone; "A" and "I" followed by a word are an article/pronoun.
_LONE_CAPITAL = re.compile(r"\b(?!(?:A|I)\s+[a-z])([A-Z])\b")


def _norm_text(text: str) -> str:
    text = _NUMBER_WORD_RE.sub(lambda m: str(_NUMBER_WORDS.index(m.group(1))), text.casefold())
    text = " ".join(re.sub(r"[^\w\s]", " ", text).split())
    return re.sub(r"^(?:a|an|the) ", "", text)


def _options_in(reply: str, texts: list[str]) -> set[int]:
    """Options named by ``reply``: its exact text, else each option found as whole words,
    ignoring one that is part of a longer one found too ("red" inside "dark red")."""
    norm, options = _norm_text(reply), [_norm_text(t) for t in texts]
    exact = {i for i, option in enumerate(options) if option and option == norm}
    if exact:
        return exact
    found = {i for i, o in enumerate(options) if o and re.search(rf"\b{re.escape(o)}\b", norm)}
    return {i for i in found if not any(j != i and options[i] in options[j] for j in found)}


def normalize_choice(answer: str, options: Sequence[str]) -> str | None:
    """The option letter a reply names ("(B)", "The answer is B.", "Option C: red", or an
    option's own text), or None when it names none, or more than one."""
    texts = option_texts(options)
    letters = OPTION_LETTERS[: len(texts)]
    reply = extract_answer(answer)
    if not reply or not texts:
        return None

    def one(found: set[str]) -> str | None:
        valid = {letter.upper() for letter in found} & set(letters)
        return valid.pop() if len(valid) == 1 else None

    if (bare := _BARE_LETTER.match(reply)) and bare.group(1).upper() in letters:
        return bare.group(1).upper()
    if (label := _LEADING_LABEL.match(reply)) and (
        letter := one(set(label.group(1, 2, 4)) - {None})
    ):
        rest = label.group(3) or label.group(5) or ""
        named = _options_in(rest, texts) if rest.strip() else set()
        others = {m.upper() for m in _BRACKETED_LETTER.findall(rest)} & set(letters)
        # "Option C: red" where red is option A, or "(A) or (C)", contradicts itself.
        if others - {letter} or (named and letters.index(letter) not in named):
            return None
        return letter
    # Each later rule either settles on one letter or gives up: guessing scores noise.
    for letter_rule in (_ANSWER_PHRASE, _BRACKETED_LETTER):
        found = {g for m in letter_rule.finditer(reply) for g in m.groups() if g}
        if found & set(letters + letters.lower()):
            return one(found)
    if named := _options_in(reply, texts):
        return letters[named.pop()] if len(named) == 1 else None
    return one(set(_LONE_CAPITAL.findall(reply)))
