"""Answer scoring: is a model's raw reply right for a sample, by the sample's scorer
("text", "mc", "yesno", "count"), and the normalisers those scorers are built on.

Each scorer reads the answer out of the reply first (the last ``<answer>``, else the text
outside the reasoning tags, after any "the answer is"). A reply that is ambiguous (two
counts, both yes and no, two options) scores False: guessing would only add noise to a
reward. A gold answer its scorer cannot read is a data error and raises ValueError.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from magsrl.data.sample import Sample
from magsrl.proto.prompts import OPTION_LETTERS, option_texts
from magsrl.zoom.choices import normalize_choice
from magsrl.zoom.parsing import extract_answer

__all__ = [
    "SCORERS",
    "answer_text",
    "gold_letter",
    "normalize_text",
    "parse_count",
    "parse_yesno",
    "score",
]

_ARTICLES = frozenset({"a", "an", "the"})
# "the answer is X", "Final answer: X", "answer would be X": the answer is what follows.
_LEAD_IN = re.compile(
    r"\banswer\b\s*(?:(?:is|would be|should be|will be)\b\s*:?|[:：])\s*(?=\S)", re.IGNORECASE
)
_WRAPPING = " \t\n\"'`*_.,;:!?()[]{}"

_UNITS = (
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen"),
    *("eighteen", "nineteen"),
)
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50}
_TENS |= {"sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_NUMBER_WORDS = {word: value for value, word in enumerate(_UNITS)} | _TENS
_LAST_UNIT = 9  # "twenty-one" .. "twenty-nine": a tens word takes one unit after it
_HUNDRED = "hundred"
# Words that answer a count with zero, when the reply names no number at all.
_ZERO_WORDS = frozenset({"no", "none", "nothing", "nobody", "neither"})
_COUNT_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+")

_YES = frozenset({"yes", "yeah", "yep", "yup", "true", "correct", "affirmative"})
_NO = frozenset({"no", "nope", "false", "incorrect", "wrong", "negative"})
_NEGATORS = frozenset({"not", "never"})

# Words a short free-text reply may wrap the gold answer in ("the red one", "it is red",
# "on the left") and still mean exactly it; any other word ("not", "and", a noun) may not.
_FILLER = frozenset(
    {"it", "its", "is", "are", "was", "were", "this", "that", "they", "one", "ones"}
    | {"color", "colour", "side", "on", "in", "to", "at"}
)


def answer_text(reply: str) -> str:
    """The answer part of a raw reply: the last ``<answer>`` (or the text outside the
    reasoning tags), from the last "answer is" on, without wrapping quotes or markdown."""
    text = extract_answer(reply or "")
    lead_ins = list(_LEAD_IN.finditer(text))
    if lead_ins:
        text = text[lead_ins[-1].end() :]
    return text.strip(_WRAPPING)


def normalize_text(text: str) -> str:
    """Casefolded words without punctuation or the articles a/an/the, one space apart."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.replace("'", "").replace("\u2019", "")  # "man's" -> "mans", not "man s"
    words = re.sub(r"[\W_]+", " ", text).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def parse_count(text: str) -> int | None:
    """The count a reply gives: digits ("12", "2 people"), number words ("three",
    "twenty-one", "one hundred"), or zero words ("none", "there are no dogs") when no number
    is named. None when there is no count, or more than one."""
    tokens = _COUNT_TOKEN.findall(answer_text(text).casefold())
    numbers: set[float] = set()
    i = 0
    while i < len(tokens):
        if tokens[i][0].isdigit():
            numbers.add(float(tokens[i]))
            i += 1
        elif (words := _number_words(tokens, i)) is not None:
            value, i = words
            numbers.add(float(value))
        else:
            i += 1
    if len(numbers) > 1:
        return None
    if numbers:
        value = numbers.pop()
        return int(value) if value.is_integer() else None
    return 0 if any(token in _ZERO_WORDS for token in tokens) else None


def _number_words(tokens: list[str], i: int) -> tuple[int, int] | None:
    """The number spelled from ``tokens[i]`` on, and the index after it, or None."""
    below = _below_hundred(tokens, i)
    if below is None:
        return None
    value, i = below
    if i < len(tokens) and tokens[i] == _HUNDRED:
        value, i = value * 100, i + 1
        rest = _below_hundred(tokens, i + (i < len(tokens) and tokens[i] == "and"))
        if rest is not None:
            value, i = value + rest[0], rest[1]
    return value, i


def _below_hundred(tokens: list[str], i: int) -> tuple[int, int] | None:
    if i >= len(tokens) or tokens[i] not in _NUMBER_WORDS:
        return None
    value = _NUMBER_WORDS[tokens[i]]
    unit = _NUMBER_WORDS.get(tokens[i + 1], -1) if i + 1 < len(tokens) else -1
    if tokens[i] in _TENS and 1 <= unit <= _LAST_UNIT:
        return value + unit, i + 2
    return value, i + 1


def parse_yesno(text: str) -> bool | None:
    """True for yes/true/correct, False for no/false/incorrect, in a reply such as "Yes, it
    is.", "False." or "The statement is not true."; None when it says neither, or both."""
    words = normalize_text(re.sub(r"n[’']t\b", " not", answer_text(text))).split()
    if not words:
        return None
    if words[0] in _YES or words[0] in _NO:  # "Yes, there is no doubt": the first word rules
        return words[0] in _YES
    verdicts = {
        (word in _YES) != (i > 0 and words[i - 1] in _NEGATORS)
        for i, word in enumerate(words)
        if word in _YES or word in _NO
    }
    return verdicts.pop() if len(verdicts) == 1 else None


def gold_letter(sample: Sample) -> str:
    """The letter of a multiple-choice sample's answer, given as a letter or as the text."""
    if not sample.options:
        raise ValueError(f"sample {sample.id}: scorer 'mc' needs options")
    letters = OPTION_LETTERS[: len(option_texts(sample.options))]
    answer = sample.answer.strip().strip("().").upper()
    if len(answer) == 1 and answer in letters:
        return answer
    letter = normalize_choice(sample.answer, sample.options)
    if letter is None:
        raise ValueError(
            f"sample {sample.id}: answer {sample.answer!r} is neither an option letter "
            f"({', '.join(letters)}) nor one option's text"
        )
    return letter


def _score_mc(sample: Sample, reply: str) -> bool:
    return normalize_choice(reply, sample.options or []) == gold_letter(sample)


def _score_yesno(sample: Sample, reply: str) -> bool:
    gold = parse_yesno(sample.answer)
    if gold is None:
        raise ValueError(f"sample {sample.id}: answer {sample.answer!r} is not yes or no")
    return parse_yesno(reply) is gold


def _score_count(sample: Sample, reply: str) -> bool:
    gold = parse_count(sample.answer)
    if gold is None:
        raise ValueError(f"sample {sample.id}: answer {sample.answer!r} is not a count")
    return parse_count(reply) == gold


def _score_text(sample: Sample, reply: str) -> bool:
    """Equal after ``normalize_text``; a numeric gold compares as a count, a yes/no gold as
    yes/no, and a short reply may wrap the gold in filler words. ``extra["accepted"]``
    lists other answers that count as right (GQA's full-sentence answer)."""
    said = normalize_text(answer_text(reply))
    if not said:
        return False
    accepted = sample.extra.get("accepted", [])
    golds = [sample.answer, *(a for a in accepted if isinstance(a, str))]
    return any(_text_match(said, reply, gold) for gold in golds)


def _text_match(said: str, reply: str, gold: str) -> bool:
    expected = normalize_text(gold)
    if not expected:
        return False
    if said == expected:
        return True
    if expected in _YES | _NO:
        return parse_yesno(reply) is (expected in _YES)
    numeric = all(word.isdigit() or word in _NUMBER_WORDS for word in expected.split())
    if numeric and (count := parse_count(gold)) is not None:
        return parse_count(reply) == count
    words, target = said.split(), expected.split()
    starts = [i for i in range(len(words)) if words[i : i + len(target)] == target]
    if len(starts) != 1:
        return False
    rest = words[: starts[0]] + words[starts[0] + len(target) :]
    return all(word in _FILLER for word in rest)


SCORERS: dict[str, Callable[[Sample, str], bool]] = {
    "text": _score_text,
    "mc": _score_mc,
    "yesno": _score_yesno,
    "count": _score_count,
}


def score(sample: Sample, reply: str) -> bool:
    """Whether a raw model reply answers the sample right, by ``sample.scorer``."""
    scorer = SCORERS.get(sample.scorer)
    if scorer is None:
        raise ValueError(
            f"sample {sample.id}: unknown scorer {sample.scorer!r}; expected one of "
            f"{sorted(SCORERS)}"
        )
    return scorer(sample, reply)
