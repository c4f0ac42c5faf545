"""The LLM judge's replies (utils.judge_responses): parse_score reads the 0-100 score, judge_summary sums them up."""

from __future__ import annotations

import re
import warnings

# parse_score's patterns. A number never starts inside a word or a decimal ("llama3.2" holds no score).
_NUMBER = r"(?<![\w.])(-?\d+(?:\.\d+)?)(?!\w)"
_BARE_NUMBER = re.compile(_NUMBER + r"[.!%]?")
_FRACTION = re.compile(_NUMBER + r"\s*(?:/|out\s+of)\s*(\d+)(?!\w)", re.IGNORECASE)
_SCORE_WORD = r"\b(?:scor|rat|grad)(?:e|es|ed|ing)\b[^\d\n]{0,30}?"  # "Score: ", "I would rate this "
_SCORE_WORD_NUMBER = re.compile(_SCORE_WORD + _NUMBER, re.IGNORECASE)
_OTHER_SCALE = "\x00"  # stands in for "8/10" and the like, so no digit of it is read as a score
_SCORE_WORD_OTHER_SCALE = re.compile(_SCORE_WORD + _OTHER_SCALE, re.IGNORECASE)
_RANGE = re.compile(r"(?<![\w.])[01]\s*(?:-|–|—|to|and)\s*100(?!\w)", re.IGNORECASE)  # "0-100", "0 to 100"
_NUMBER_RE = re.compile(_NUMBER)
_OUT_OF_100 = re.compile(r"(?:/|\bout\s+of)\s*100(?!\w)", re.IGNORECASE)


def _is_100(digits: str) -> bool:
    return digits.lstrip("0") == "100"  # not int(digits): Python refuses to convert more than 4,300 digits


def _as_score(number: str) -> int | None:
    value = float(number)
    return int(value + 0.5) if 0 <= value <= 100 else None  # a decimal rounds half up: 85.5 -> 86


def parse_score(reply: str) -> int | None:
    """The 0-100 score in a judge's reply, or None when there is no single clear one.

    Markdown marks (`*`, `_`, backticks, `#`) are dropped, then the first rule that applies wins:
    1. The first line is just a number ("85", "**85**", "85.", "85%"; more text may follow below).
    2. Fractions on another scale ("8/10", "4 out of 5") are never read as scores; if a score
       word points at one ("Rating: 8/10"), the reply is on the wrong scale: None.
    3. Explicit scores: "N/100", "N out of 100", and the first number after score/rating/rate/
       grade (any ending) on the same line, within 30 characters ("Score: 85", "I would rate
       this 85"). Ranges such as "0-100" and "0 to 100" never count. If all explicit scores
       agree, that is the score; if they disagree, None.
    4. Otherwise, if exactly one distinct number is left in the reply, that number; else None.
    A score outside 0..100 ("150", "-5") is None, and so is a reply that is not text.
    Callers count None as unparsed, never as 0.
    """
    if not isinstance(reply, str):  # e.g. a judge whose reply carried no text
        return None
    text = re.sub(r"[*_`#]", "", reply).strip()
    first_line = text.split("\n", 1)[0].strip()
    if _BARE_NUMBER.fullmatch(first_line):
        return _as_score(first_line.rstrip(".!%"))
    text = _RANGE.sub(" ", text)
    explicit = {_as_score(n) for n, denominator in _FRACTION.findall(text) if _is_100(denominator)}
    text = _FRACTION.sub(lambda m: m.group(0) if _is_100(m.group(2)) else _OTHER_SCALE, text)
    if _SCORE_WORD_OTHER_SCALE.search(text):
        return None
    explicit |= {_as_score(n) for n in _SCORE_WORD_NUMBER.findall(text)}
    if explicit:
        return explicit.pop() if len(explicit) == 1 else None
    numbers = set(_NUMBER_RE.findall(_OUT_OF_100.sub(" ", text)))
    return _as_score(numbers.pop()) if len(numbers) == 1 else None


def judge_summary(
    model: str, scores: list[int | None], replies: list[str | None], n_judged: int, error: str | None
) -> dict:
    """judge_responses' result: the scores, what could not be parsed (never counted as 0), and why judging stopped."""
    if error is not None:
        warnings.warn(
            f"Judging stopped at entry {n_judged} of {len(scores)}; the {n_judged} replies before it are kept. {error}",
            stacklevel=3,  # the caller of judge_responses
        )
    parsed = [s for s in scores if s is not None]
    unparsed = [i for i in range(n_judged) if scores[i] is None]
    return {
        "model": model,
        "n": len(scores),
        "n_judged": n_judged,
        "n_scored": len(parsed),
        "mean": sum(parsed) / len(parsed) if parsed else None,
        "scores": scores,
        "unparsed": {"count": len(unparsed), "indices": unparsed},
        "replies": replies,
        "error": error,
    }
