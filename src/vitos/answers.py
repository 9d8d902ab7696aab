"""Answer location, normalisation and judging, shared by the RL accuracy reward and by evaluation.

One judge for both uses, so that a policy is rewarded for exactly what the benchmarks count as correct.
The rules are specified, with an id per rule, in docs/scoring.md; every rule has a case in
tests/scoring_cases.py. In short:

* `locate_answer(completion)` finds where the answer is (rules L1-L7): the last `<answer>` tag (closed, or
  unclosed up to the next tag / the end), else the text after the last `</think>`, else nothing when the
  completion stopped inside `<think>`, else the bare text.
* `unwrap_answer(text, kind)` takes the answer out of its wrapping (U1-U5): the last `\\boxed{...}` beats
  the answer markers ("The answer is", "Answer:", "Final answer", "答案"); of several markers the last one
  that yields an answer wins; markdown emphasis is dropped; an open answer ends at its first sentence end.
* Unicode NFKC and removal of invisible format characters come before anything else (N1, N2);
  `normalize_text` is the comparison normalisation (N3).
* yes/no (Y1-Y5), multiple choice (C1-C12), open answers (O1-O6): see the functions below.

Never guess: an answer that cannot be extracted is a parse failure (`Judgement.parse_failure`, with a
`reason`), never mapped to a similar or random option.

`judge(prediction, sample)` judges the located answer text (e.g. the `<answer>` content the reward
parser found); `judge_completion(completion, sample)` runs the whole chain from a raw completion.
`compat="medevalkit"` reproduces MedEvalKit's rules instead (`vitos.eval.medevalkit`); it is for
comparison with published numbers only and never used for rewards.

Usage::

    from vitos.answers import judge, judge_completion
    j = judge("No, there is no fracture.", sample)        # sample.kind == 'yes_no'
    j.correct, j.parsed, j.parse_failure                  # True, 'no', False
    judge_completion("<think>...</think><answer>B</answer>", mc_sample).parsed   # 'B'
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from vitos.data.sample import Sample

__all__ = [
    "Judgement",
    "AnswerLocation",
    "clean_text",
    "normalize_text",
    "locate_answer",
    "unwrap_answer",
    "extract_yes_no",
    "extract_choice",
    "extract_number",
    "token_f1",
    "judge",
    "judge_completion",
    "COMPAT_MODES",
]

COMPAT_MODES = (None, "medevalkit", "mmmu")
"""None = the rules of docs/scoring.md; "medevalkit" = MedEvalKit's rules per benchmark (`sample.meta
['benchmark']`); "mmmu" = the kit's MMMU rules whatever the benchmark (kept for older callers)."""


@dataclass
class Judgement:
    """The verdict on one prediction."""

    correct: bool
    """Whether the prediction counts as the reference answer."""
    parsed: str | None
    """The extracted answer: 'yes'/'no', an option letter, or normalised text; None when nothing parsed."""
    parse_failure: bool
    """True when no answer could be extracted (counted separately in every report)."""
    recall: float
    """Token recall vs the reference for open questions; 1.0/0.0 (= correct) for closed ones."""
    f1: float
    """Token F1 vs the reference for open questions; 1.0/0.0 (= correct) for closed ones."""
    reason: str | None = None
    """Why parsing failed: 'no_answer' (nothing located), 'empty', 'ambiguous' (several answers asserted),
    'unparseable'; None when an answer was read."""


# --------------------------------------------------------------------------------------------------
# N: Unicode and normalisation
# --------------------------------------------------------------------------------------------------


def clean_text(s: object) -> str:
    """N1 + N2: Unicode NFKC (full-width letters/digits/brackets, non-breaking spaces -> ASCII), then every
    invisible format character (category Cf: zero-width space, joiners, BOM, soft hyphen) removed."""
    if s is None:
        return ""
    text = unicodedata.normalize("NFKC", str(s))
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


_PUNCT = re.compile(r"[^\w\s]|_")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_SPACES = re.compile(r"\s+")


def normalize_text(s: object) -> str:
    """N3, the comparison normalisation: `clean_text`, lower-case, every character that is neither a word
    character nor white space (and the underscore) -> a space, the articles a/an/the removed as whole
    words, runs of white space collapsed, ends stripped. "The Left-sided  Lung." -> "left sided lung".
    Non-Latin letters (SLAKE's Chinese rows) are word characters and survive; `None` becomes ""."""
    if s is None:
        return ""
    text = clean_text(s).lower()
    text = _PUNCT.sub(" ", text)
    text = _ARTICLES.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


# --------------------------------------------------------------------------------------------------
# L: where the answer is
# --------------------------------------------------------------------------------------------------


@dataclass
class AnswerLocation:
    """Where `locate_answer` found the answer in a completion."""

    text: str | None
    """The answer text (stripped), or None when the completion holds no answer."""
    source: str
    """'answer_tag', 'answer_tag_unclosed', 'after_think', 'bare', or 'none' (cut inside <think>)."""


_TAG = re.compile(r"<\s*(/?)\s*(think|box|answer)\s*>", re.IGNORECASE)
_BOX_BLOCK = re.compile(r"<\s*box\s*>.*?(?:<\s*/\s*box\s*>|$)", re.IGNORECASE | re.DOTALL)


def _strip_tags(text: str) -> str:
    """L7: the fallback text without <box>...</box> blocks and without stray tags."""
    return _TAG.sub(" ", _BOX_BLOCK.sub(" ", text)).strip()


def locate_answer(completion: object) -> AnswerLocation:
    """L1-L7 of docs/scoring.md, after N1/N2 (`clean_text`):

    L1 the content of the LAST opening `<answer>` tag up to its `</answer>`;
    L2 an `<answer>` never closed (a truncated generation) runs to the next tag or the end;
    L3 no `<answer>` tag: the text after the last `</think>`;
    L4 a `<think>` opened after the last `</think>` (or with none) and never closed: the completion was cut
       inside its reasoning, there is no answer (text = None), the reasoning is never mined;
    L5 no tag at all: the whole (stripped) text;
    L6 an empty result is no answer (the judge counts it as a parse failure);
    L7 in L3/L5 text, <box> blocks and stray tags are removed.
    Tags match case-insensitively, with inner spaces (`< answer >`).
    """
    text = clean_text(completion)
    tags = [(m.group(2).lower(), m.group(1) == "/", m.start(), m.end()) for m in _TAG.finditer(text)]
    opens = [k for k, (name, closing, _, _) in enumerate(tags) if name == "answer" and not closing]
    if opens:
        k = opens[-1]
        start, end, source = tags[k][3], len(text), "answer_tag_unclosed"
        for name, closing, s, _ in tags[k + 1 :]:
            if name == "answer" and closing:
                end, source = s, "answer_tag"
                break
        else:
            if k + 1 < len(tags):
                end = tags[k + 1][2]
        found = text[start:end].strip()
        return AnswerLocation(found or None, source)
    think_close = [k for k, (name, closing, _, _) in enumerate(tags) if name == "think" and closing]
    think_open = [k for k, (name, closing, _, _) in enumerate(tags) if name == "think" and not closing]
    last_close = think_close[-1] if think_close else -1
    if any(k > last_close for k in think_open):
        return AnswerLocation(None, "none")  # L4: stopped while still thinking
    if last_close >= 0:
        found = _strip_tags(text[tags[last_close][3] :])
        return AnswerLocation(found or None, "after_think")
    found = _strip_tags(text)
    return AnswerLocation(found or None, "bare")


# --------------------------------------------------------------------------------------------------
# U: unwrapping
# --------------------------------------------------------------------------------------------------

_MARKDOWN = re.compile(r"\*+|`+|__+")
_BOXED_START = re.compile(r"\\boxed\s*\{")
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mathbf|rm)\s*\{([^{}]*)\}")
_MARKER = re.compile(
    r"(?:\bfinal\s+answer(?:\s+is)?"
    r"|\b(?:the\s+)?(?:correct\s+|best\s+|most\s+likely\s+|right\s+)?answer\s+(?:is|would\s+be|should\s+be|will\s+be)"
    r"|\banswer\s*:"
    r"|答案\s*(?:是|为|:)?)"
    r"\s*[:\-]?\s*",
    re.IGNORECASE,
)
# U5: a sentence ends at . ! ? ; followed by white space or the end (so "2.5" is kept), or at a newline.
_SENTENCE_END = re.compile(r"[.!?;](?=\s|$)|\n")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every balanced `\\boxed{...}` (nested braces allowed), in order; unbalanced ones skipped."""
    out = []
    for m in _BOXED_START.finditer(text):
        depth, i = 0, m.end()
        while i < len(text):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                if depth == 0:
                    out.append(text[m.end() : i])
                    break
                depth -= 1
            i += 1
    return out


def _first_sentence(text: str) -> str:
    m = _SENTENCE_END.search(text)
    return (text[: m.start()] if m else text).strip()


def unwrap_answer(text: str | None, kind: str = "open", accepts: Callable[[str], bool] | None = None) -> str:
    """U1-U5 of docs/scoring.md on a located answer (N1/N2 applied first):

    U4 markdown emphasis (`*`, `**`, backticks, `__`) is removed;
    U1 when there is a `\\boxed{...}` (inner spaces and nested braces allowed, `\\text{}` unwrapped), the
       LAST box's content is the answer;
    U3 a box beats every marker;
    U2 else the answer follows a marker ("final answer", "the answer is", "answer is", "answer would be",
       "answer:", "答案"), case-insensitive; of several markers the LAST one whose tail `accepts` (yields an
       answer of this kind) wins, else the last one;
    U5 for open answers the tail after a marker ends at its first sentence end (". ", "!", "?", ";", a
       newline; a decimal point is not a sentence end).
    No box and no marker: the text itself (stripped).
    """
    t = _MARKDOWN.sub("", clean_text(text)).strip()
    boxes = _boxed_contents(t)
    if boxes:
        inner = boxes[-1]
        while True:  # \text{left lung} -> left lung (possibly nested)
            new = _LATEX_TEXT.sub(r"\1", inner)
            if new == inner:
                break
            inner = new
        return inner.strip()
    markers = list(_MARKER.finditer(t))
    if not markers:
        return t
    tails = []
    for m in markers:
        tail = t[m.end() :].strip()
        if kind == "open":
            tail = _first_sentence(tail)
        tails.append(tail)
    for tail in reversed(tails):
        if tail and (accepts is None or accepts(tail)):
            return tail
    return tails[-1]


# --------------------------------------------------------------------------------------------------
# Y: yes / no
# --------------------------------------------------------------------------------------------------

YES_WORDS = frozenset({"yes", "yeah", "yep", "yup"})
NO_WORDS = frozenset({"no", "nope", "nah"})
_CLAUSE_SPLIT = re.compile(r"[,.;:!?\n/()\[\]{}\"“”‘’…]+|'(?!\w)|(?<!\w)'|\s[-–—]+\s")
_WORD = re.compile(r"[^\W_]+")


def _yes_no(text: str) -> tuple[str | None, str | None]:
    """(answer, failure reason) of an unwrapped yes/no answer: Y1-Y5."""
    asserted: set[str] = set()
    for clause in _CLAUSE_SPLIT.split(text.lower()):
        words = _WORD.findall(clause)
        if not words:
            continue
        for word in {words[0], words[-1]}:
            if word in YES_WORDS:
                asserted.add("yes")
            elif word in NO_WORDS:
                asserted.add("no")
    if len(asserted) == 1:
        return next(iter(asserted)), None
    return None, ("ambiguous" if asserted else "unparseable")


def _yes_no_verdict(pred: str | None) -> tuple[str | None, str | None]:
    text = unwrap_answer(pred, "yes_no", accepts=lambda t: _yes_no(t)[0] is not None)
    if not text:
        return None, "empty"
    return _yes_no(text)


def extract_yes_no(pred: str | None) -> str | None:
    """'yes' / 'no' asserted by `pred` (after unwrapping), or None (Y1-Y5 of docs/scoring.md).

    Y1 the text is split into clauses at punctuation (, . ; : ! ? / brackets quotes, a spaced dash, a
       newline); a clause whose FIRST or LAST word is a yes-word or a no-word asserts it:
       "No, there is no fracture." -> no; "Yes, there is no fracture line" -> yes; "No fracture is seen"
       -> no; "I think yes" -> yes;
    Y2 both asserted ("Yes or no", "yes/no", "Yes. Actually, no.") -> None: a hedge is not credited;
    Y3 synonyms: yeah / yep / yup = yes, nope / nah = no;
    Y4 unsupported (-> None): negation sentences without a yes/no word ("There is no fracture", whose
       meaning depends on the question), "correct", "true", "negative", "positive", "absent", ...;
    Y5 words that merely contain the letters ("normal", "nodule", "not", "none") never count.
    """
    return _yes_no_verdict(pred)[0]


# --------------------------------------------------------------------------------------------------
# C: multiple choice
# --------------------------------------------------------------------------------------------------

# C1: the whole text (or, C2, its first line) is one letter, bare or decorated: "B", "(B)", "B.", "[b]"
_ONLY_LETTER = re.compile(r"^[\W_]*([A-Za-z])[\W_]*$")
# C3: a leading letter and a delimiter, then the option text or a reason
_LEADING_UPPER = re.compile(
    r"^[\s(\[]*([A-Z])(?:\s*[).:,\]]|\s+[-–—]+|\s+(?=(?:because|since|as|given|due)\b))\s*(.*)$", re.DOTALL
)
_LEADING_LOWER = re.compile(r"^[\s(\[]*([a-z])\s*[).:\]]\s*(.*)$", re.DOTALL)
# C4: a keyword or verb, then a letter; a lower-case letter only when a delimiter or the end follows it
_KEYWORD_LETTER = re.compile(
    r"\b(?:answers?|options?|choices?|choose|chose|choosing|pick|picks|picked|select|selected|go\s+with|going\s+with)"
    r"\b\s*(?:is|would\s+be|should\s+be|will\s+be)?\s*[:\-]?\s*\(?([A-Za-z])\)?(?=$|[\s.,;:!?)\]])",
    re.IGNORECASE,
)
# C4b: a lone capital letter followed by punctuation or the end ("I would say B, since ...")
_LONE_CAPITAL = re.compile(r"(?<![\w'’])([A-Z])(?=[.,;:!?)\]]|\s*$)")
# C5: "(B)" anywhere (capital only: a lower-case "(a)" is too often an enumeration in prose)
_PAREN_CAPITAL = re.compile(r"\(([A-Z])\)")
# C9: several letters listed: "A or B", "A, C", "B and D", "A/B"
_LETTER_LIST = re.compile(r"(?<![\w'’])([A-Z])\s*(?:,|/|&|\band\b|\bor\b)\s*\(?([A-Z])(?![\w'’])")


def _word_spans(haystack: str, needle: str) -> list[tuple[int, int]]:
    """Spans of `needle` as whole words in the space-normalised `haystack`."""
    if not needle:
        return []
    padded = f" {haystack} "
    spans, start = [], 0
    while True:
        i = padded.find(f" {needle} ", start)
        if i < 0:
            return spans
        spans.append((i, i + len(needle) + 1))
        start = i + 1


def _options_in_text(norm: str, option_norms: dict[str, str]) -> set[str]:
    """C8: letters whose option text occurs as whole words in `norm`, an occurrence inside a longer
    matching option's occurrence not counting ("lung cancer" names "Lung cancer", not also "Lung")."""
    spans = {letter: _word_spans(norm, text) for letter, text in option_norms.items()}
    found = set()
    for letter, own in spans.items():
        for s, e in own:
            covered = any(
                len(option_norms[other]) > len(option_norms[letter]) and s2 <= s and e <= e2
                for other, others in spans.items()
                if other != letter
                for s2, e2 in others
            )
            if not covered:
                found.add(letter)
                break
    return found


def _leading_option(rest_norm: str, option_norms: dict[str, str]) -> set[str]:
    """Letters of the longest option text that `rest_norm` equals or starts with (as whole words)."""
    best, letters = -1, set()
    for letter, text in option_norms.items():
        if text and (rest_norm == text or rest_norm.startswith(text + " ")):
            if len(text) > best:
                best, letters = len(text), {letter}
            elif len(text) == best:
                letters.add(letter)
    return letters


def _strip_restated(text: str, options: dict[str, str]) -> tuple[str, bool]:
    """C6: remove "X. <text of X>" restatements when two or more options are restated."""
    found: list[tuple[int, int, str]] = []
    for letter, option_text in options.items():
        body = re.escape(clean_text(option_text).strip()).replace(r"\ ", r"\s+")
        if not body:
            continue
        pattern = re.compile(rf"(?<![\w'’])\(?{re.escape(letter)}\s*[).:]\s*{body}(?![\w])", re.IGNORECASE)
        found += [(m.start(), m.end(), letter) for m in pattern.finditer(text)]
    if len({letter for _, _, letter in found}) < 2:
        return text, False
    for start, end, _ in sorted(found, reverse=True):
        text = text[:start] + "\n" + text[end:]
    return text.strip(), True


def _letters_of(text: str, options: dict[str, str], option_norms: dict[str, str]) -> set[str]:
    """C1-C5 and C9: every letter the text asserts (not yet restricted to the option keys)."""
    candidates: set[str] = set()
    first_line = text.splitlines()[0] if text else ""
    only = _ONLY_LETTER.match(text) or _ONLY_LETTER.match(first_line)
    if only:
        candidates.add(only.group(1).upper())
    else:
        leading = _LEADING_UPPER.match(text) or _LEADING_LOWER.match(text)
        if leading:
            letter = leading.group(1).upper()
            candidates.add(letter)
            named = _leading_option(normalize_text(leading.group(2)), option_norms)
            if named and letter not in named:
                candidates |= named  # "A. Meningioma" while Meningioma is B: letter and text disagree
    for m in _KEYWORD_LETTER.finditer(text):
        letter = m.group(1)
        rest = text[m.end(1) :]
        if letter.isupper() or rest == "" or rest[0] in ").:":
            candidates.add(letter.upper())
    for pattern in (_LONE_CAPITAL, _PAREN_CAPITAL):
        candidates |= {m.group(1) for m in pattern.finditer(text)}
    for m in _LETTER_LIST.finditer(text):
        if m.group(1) in options and m.group(2) in options:
            candidates |= {m.group(1), m.group(2)}
    return candidates


def _choice(text: str, options: dict[str, str]) -> tuple[str | None, str | None]:
    """(letter, failure reason) of an unwrapped multiple-choice answer: C1-C12."""
    option_norms = {k: normalize_text(v) for k, v in options.items()}
    text, restated = _strip_restated(text, options)
    if not normalize_text(text):
        return None, ("unparseable" if restated else "empty")
    candidates = _letters_of(text, options, option_norms) & set(options)  # C10
    if len(candidates) == 1:
        return next(iter(candidates)), None
    if candidates:
        return None, "ambiguous"  # C9
    whole = normalize_text(text)
    by_text = {k for k, v in option_norms.items() if v and v == whole}  # C7
    if not by_text:
        by_text = _options_in_text(whole, option_norms)  # C8
    if len(by_text) == 1:
        return next(iter(by_text)), None
    return None, ("ambiguous" if by_text else "unparseable")  # C12: never a similar or random option


def _choice_verdict(pred: str | None, options: dict[str, str]) -> tuple[str | None, str | None]:
    opts = {str(k).strip().upper(): str(v) for k, v in options.items()}
    text = unwrap_answer(pred, "choice", accepts=lambda t: _choice(t, opts)[0] is not None)
    if not text:
        return None, "empty"
    return _choice(text, opts)


def extract_choice(pred: str | None, options: dict[str, str]) -> str | None:
    """The option letter `pred` names (after unwrapping), or None (C1-C12 of docs/scoring.md).

    Letter candidates: C1 the whole answer one decorated letter ("B", "(B)", "b.", "**B**"); C2 its first
    line one letter ("B\\n\\nBecause ..."); C3 a leading letter + delimiter or reason ("B. Meningioma",
    "b) ...", "B, because", "B because", "C - Metastasis"), where a following option text must be that
    letter's; C4 a keyword or verb + letter ("option D", "I'd pick B.", "the answer: (c)") and a lone
    capital followed by punctuation or the end ("I would say B, since ..."); C5 "(B)" anywhere. C6 when
    two or more options are restated ("A. Glioma\\nB. Meningioma ..."), the restatements are removed first.
    C9 several different letters (also "A or B", "A, C") -> None; C10 letters that are not option keys are
    ignored; C11 an article ("a lesion") or a capital in prose ("Vitamin C levels") is no letter.
    Without any letter: C7 the whole answer equal to one option's text, else C8 option texts inside the
    sentence as whole words, the longest covering match winning ("lung cancer" -> "Lung cancer", not
    "Lung"); two options named -> None. C12 nothing is ever mapped to a similar or random option.
    """
    return _choice_verdict(pred, options)[0]


# --------------------------------------------------------------------------------------------------
# O: open answers
# --------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_LIST_SPLIT = re.compile(r"\s*(?:[,;&]|\band\b)\s*")


def _as_reference_number(ref: str) -> tuple[float, int] | None:
    """(value, decimals) when the reference is a plain number ("6", "0.33", "1,200", "25%"), else None."""
    s = clean_text(ref).strip().rstrip("%").strip()
    if not re.fullmatch(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+", s):
        return None
    plain = s.replace(",", "")
    decimals = len(plain.split(".")[1]) if "." in plain else 0
    return float(plain), decimals


def extract_number(pred: str | None) -> tuple[float | None, str | None]:
    """O4: (value, failure reason) of the one number an answer states.

    The text after the last "=" when there is one; a whole answer that is a number word (zero .. twenty);
    else every number in the text (commas as thousands separators): exactly one distinct value -> it; none
    -> (None, 'unparseable'); several -> (None, 'ambiguous').
    """
    text = clean_text(pred)
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    word = normalize_text(text)
    if word in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[word]), None
    values = {float(m.group(0).replace(",", "")) for m in _NUMBER.finditer(text)}
    if len(values) == 1:
        return next(iter(values)), None
    return None, ("ambiguous" if values else "unparseable")


def _list_items(text: str) -> list[str]:
    items = [normalize_text(part) for part in _LIST_SPLIT.split(clean_text(text).lower())]
    return sorted(i for i in items if i)


def token_f1(pred: str | None, ref: str | None) -> tuple[float, float, float]:
    """O6: (precision, recall, f1) of the normalised word bags of `pred` against `ref`, in that order.

    Multiset overlap as in SQuAD: pred "left lung lung", ref "left lung" -> precision 2/3, recall 1.
    Both empty -> (1, 1, 1); exactly one empty -> (0, 0, 0).
    """
    pred_tokens = normalize_text(pred).split()
    ref_tokens = normalize_text(ref).split()
    if not pred_tokens or not ref_tokens:
        same = float(not pred_tokens and not ref_tokens)
        return same, same, same
    overlap = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if overlap == 0:
        return 0.0, 0.0, 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(ref_tokens)
    return precision, recall, 2 * precision * recall / (precision + recall)


def _references(sample: Sample) -> list[str]:
    refs = [str(sample.answer)]
    for extra in sample.meta.get("answers") or []:
        if str(extra) not in refs:
            refs.append(str(extra))
    return refs


def _judge_open(prediction: str, sample: Sample) -> Judgement:
    """O1-O6 against every accepted reference (O2: `sample.answer` and `sample.meta['answers']`)."""
    text = unwrap_answer(prediction, "open")
    parsed = normalize_text(text)
    if not parsed:
        return Judgement(False, None, True, 0.0, 0.0, "empty")  # O5
    _, recall, f1 = token_f1(text, sample.answer)
    numeric_failure = None
    correct = False
    for ref in _references(sample):
        if parsed == normalize_text(ref):  # O1
            correct = True
            break
        ref_items = _list_items(ref)
        if len(ref_items) >= 2 and _list_items(text) == ref_items:  # O3
            correct = True
            break
        number = _as_reference_number(ref)
        if number is not None:  # O4
            value, reason = extract_number(text)
            if value is None:
                numeric_failure = numeric_failure or (reason if reason == "ambiguous" else None)
                continue
            ref_value, decimals = number
            if decimals == 0 and value == ref_value or decimals > 0 and math.isclose(
                round(value, decimals), ref_value, abs_tol=10 ** -(decimals + 3)
            ):
                correct = True
                break
    if correct:
        return Judgement(True, parsed, False, recall, f1)
    if numeric_failure:
        return Judgement(False, None, True, recall, f1, numeric_failure)
    return Judgement(False, parsed, False, recall, f1)


# --------------------------------------------------------------------------------------------------
# judging
# --------------------------------------------------------------------------------------------------


def _closed(correct: bool, parsed: str | None, reason: str | None = None) -> Judgement:
    score = 1.0 if correct else 0.0
    return Judgement(correct, parsed, parsed is None, score, score, reason if parsed is None else None)


def judge(prediction: str | None, sample: Sample, compat: str | None = None) -> Judgement:
    """Judge `prediction` -- a located answer (the `<answer>` content, or raw text) -- by `sample.kind`.

    The honest rules (docs/scoring.md U, N, Y, C, O) apply with `compat=None`. "medevalkit" / "mmmu" hand
    `prediction` to MedEvalKit's rules as the kit's `response` (`vitos.eval.medevalkit`).
    """
    if compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat mode {compat!r}; use one of {COMPAT_MODES}")
    prediction = "" if prediction is None else str(prediction)
    if compat is not None:
        from vitos.eval.medevalkit import judge_medevalkit

        return judge_medevalkit(prediction, sample, benchmark="mmmu_med" if compat == "mmmu" else None)

    if sample.kind == "yes_no":
        parsed, reason = _yes_no_verdict(prediction)
        return _closed(parsed is not None and parsed == normalize_text(sample.answer), parsed, reason)
    if sample.kind == "choice":
        if not sample.options:
            raise ValueError(f"sample {sample.id!r} is a choice question without options; the loader must fill them")
        parsed, reason = _choice_verdict(prediction, sample.options)
        return _closed(parsed is not None and parsed == str(sample.answer).strip().upper(), parsed, reason)
    if sample.kind == "open":
        return _judge_open(prediction, sample)
    raise ValueError(f"sample {sample.id!r} has unknown kind {sample.kind!r}; expected 'yes_no', 'choice' or 'open'")


def judge_completion(completion: str | None, sample: Sample, compat: str | None = None) -> Judgement:
    """Judge a raw model completion: `locate_answer` (L1-L7) then `judge`; no answer located -> a parse
    failure with reason 'no_answer'. Under a compat mode the raw completion goes to the kit's rules (which
    locate the answer their own way), by `sample.meta['benchmark']`."""
    if compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat mode {compat!r}; use one of {COMPAT_MODES}")
    if compat is not None:
        return judge(completion, sample, compat)
    location = locate_answer(completion)
    if location.text is None:
        if sample.kind not in ("yes_no", "choice", "open"):
            raise ValueError(f"sample {sample.id!r} has unknown kind {sample.kind!r}")
        return Judgement(False, None, True, 0.0, 0.0, "no_answer")
    return judge(location.text, sample)
