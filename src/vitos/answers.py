"""Answer normalisation and judging, shared by the RL accuracy reward and by evaluation.

One judge for both uses, so that a policy is rewarded for exactly what the benchmarks count as correct.
The prediction handed to `judge` is the content of the model's `<answer>` tag (or the raw text when the
model wrote no tag); extracting that tag is the job of `vitos.prompts`.

Rules (default, `compat=None`)
------------------------------
* `normalize_text(s)`:
    1. `str(s)`, Unicode NFKC, lower-case;
    2. every character that is neither a word character nor white space, and the underscore, becomes a
       space (so "left-sided" -> "left sided", "x_ray" -> "x ray"; "2.5" -> "2 5" on both sides alike);
    3. the English articles "a", "an", "the" are removed as whole words;
    4. runs of white space collapse to one space; leading/trailing space is stripped.
  Non-Latin letters (SLAKE's Chinese rows) are word characters and survive unchanged.
* yes/no questions -- `extract_yes_no`: the answer is the FIRST whole word "yes" or "no" in the
  prediction ("No, there is no fracture." -> 'no'; "Yes, no fracture" -> 'yes'). Words that merely contain
  those letters ("normal", "nodule", "not", "none", "nope") never count. No such word -> parse failure.
* multiple choice -- `extract_choice`: letter candidates are collected from
    a. the whole answer (or its first line) being one letter, bare or decorated: "B", "(B)", "B.",
       "**b**", "B\\n\\nBecause ...", "\\boxed{B}";
    b. a leading letter with a delimiter: "(B) Glioma", "B. Glioma", "b) Glioma", "B: Glioma";
    c. a keyword: "The answer is B", "Answer: (C)", "option D", "choice B" (a lower-case letter after a
       keyword counts only when followed by ")", ".", ":" or the end, so "the answer is a lesion" is not A);
    d. a parenthesised capital letter anywhere: "... I choose (B)";
    e. the whole normalised answer equal to one option's normalised text ("glioma." -> the Glioma letter);
       after a leading letter (rule b) the rest must be empty, that option's text, or match no option.
  Letters that are not keys of `options` are ignored. Exactly one distinct letter -> that letter; none or
  two different letters -> parse failure. Nothing is ever mapped to a "most similar" or random option.
* open questions: correct iff the normalised prediction equals the normalised reference (and is not
  empty). Token precision/recall/F1 (`token_f1`, bag of normalised words, SQuAD style) are reported too.
  An empty prediction is a parse failure.

`compat="medevalkit"` reproduces the rules of MedEvalKit (the Lingshu evaluation kit behind the anchor
scores in REFERENCE.md section 3; read from `utils/utils.py` and the per-benchmark `cal_metrics`):

| question | vitos (default)                          | MedEvalKit (`compat="medevalkit"`)                      |
|----------|------------------------------------------|---------------------------------------------------------|
| all      | prediction used as given                 | lower-cased; `\\boxed{}` or `<answer>` content taken;   |
|          |                                          | text after the last "answer is"/"answer:"/... marker    |
| yes/no   | first whole word yes/no                  | substring: correct iff exactly one of 'yes'/'no' occurs |
|          | ("normal", "nodule" -> parse failure)    | anywhere and it is the reference ("normal" -> 'no')     |
| choice   | letter by rules a-e, else parse failure  | letter/option text before the first "."; when nothing   |
|          |                                          | parses, the option most similar by difflib ratio (the   |
|          |                                          | first option when every ratio is 0), so a silent model  |
|          |                                          | still scores                                            |
| choice   |                                          | `compat="mmmu"`: MMMU's own parser as used by that kit  |
| (MMMU)   |                                          | for MMMU: "(B)"/" B " / option text, last mention wins; |
|          |                                          | nothing -> a random option (here seeded by sample.id)   |
| open     | normalised exact match                   | exact match of the lower-cased parsed text with the     |
|          |                                          | lower-cased, stripped reference (no punctuation or      |
|          |                                          | article removal; NOT containment of the reference)      |
| open     | (precision, recall, F1) of word bags     | word SETS, and the helper returns (f1, precision,       |
| metrics  |                                          | recall) while callers unpack (precision, recall, f1):   |
|          |                                          | the reported "recall" is precision and "f1" is recall;  |
|          |                                          | compat reproduces those reported values                 |

Under compat="mmmu", yes/no and open questions are judged as under "medevalkit" (MMMU's numeric matching
of open answers is not reproduced). Under compat, `parse_failure` is True only where the kit itself finds
no answer (yes/no: neither or both words; choice: the similarity/random fallback was used; open: empty).

Usage::

    from vitos.answers import judge
    j = judge("No, there is no fracture.", sample)        # sample.kind == 'yes_no'
    j.correct, j.parsed, j.parse_failure                  # True, 'no', False
"""

from __future__ import annotations

import difflib
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from vitos.data.sample import Sample

__all__ = [
    "Judgement",
    "normalize_text",
    "extract_yes_no",
    "extract_choice",
    "token_f1",
    "judge",
    "COMPAT_MODES",
]

COMPAT_MODES = (None, "medevalkit", "mmmu")


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


# --------------------------------------------------------------------------------------------------
# normalisation and extraction
# --------------------------------------------------------------------------------------------------

_PUNCT = re.compile(r"[^\w\s]|_")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_SPACES = re.compile(r"\s+")


def normalize_text(s: object) -> str:
    """Lower-case, punctuation and underscores to spaces, drop articles a/an/the, collapse spaces.

    Exact steps are listed in the module docstring; `None` becomes "". Example:
    "The Left-sided  Lung." -> "left sided lung".
    """
    if s is None:
        return ""
    text = unicodedata.normalize("NFKC", str(s)).lower()
    text = _PUNCT.sub(" ", text)
    text = _ARTICLES.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


_YES_NO_WORD = re.compile(r"\b(yes|no)\b")


def extract_yes_no(pred: str | None) -> str | None:
    """'yes' or 'no' decided by the first whole word 'yes'/'no' in `pred`; None when there is none.

    "No, there is no fracture." -> 'no'; "normal", "nodule", "not sure" -> None.
    """
    if not pred:
        return None
    # Word boundaries on the normalised text: "no." and "(yes)" count, "normal" and "nodule" do not.
    match = _YES_NO_WORD.search(normalize_text(pred))
    return match.group(1) if match else None


# (a) the whole answer is one letter, possibly decorated with brackets, stars, a trailing dot ...
_ONLY_LETTER = re.compile(r"^[\W_]*([A-Za-z])[\W_]*$")
# (a') LaTeX box around a letter
_BOXED_LETTER = re.compile(r"\\boxed\{\s*\(?([A-Za-z])\)?\s*\}")
# (b) leading letter + delimiter, followed by the option text: "(B) Glioma", "b) Glioma", "B. Glioma"
_LEADING_LETTER = re.compile(r"^[\s*_]*\(?([A-Za-z])\s*[).:]\s*(.*)$", re.DOTALL)
# (c) keyword + letter; the lookahead keeps "the answer is a lesion" from meaning option A
_KEYWORD_LETTER = re.compile(
    r"\b(?:answer|option|choice)s?\b\s*(?:is|would be|should be)?\s*[:\-]?\s*[*_]*\(?([A-Za-z])\)?[*_]*"
    r"(?=$|[\s.,;:!?)*_])",
    re.IGNORECASE,
)
# (d) "(B)" anywhere: upper-case only, a lower-case "(a)" is too often an enumeration in prose
_PAREN_CAPITAL = re.compile(r"\(([A-Z])\)")


def _keyword_letter_ok(match: re.Match[str], text: str) -> bool:
    letter = match.group(1)
    if letter.isupper():
        return True
    # A lower-case letter is trusted only when a delimiter (or the end) follows it directly.
    rest = text[match.end(1):]
    return rest == "" or rest[0] in ").:"


def extract_choice(pred: str | None, options: dict[str, str]) -> str | None:
    """The option letter `pred` names, or None when empty, unparseable or ambiguous (see module docstring).

    `options` maps upper-case letters to option texts, e.g. {'A': 'Glioma', 'B': 'Meningioma'}.
    """
    if not pred or not pred.strip():
        return None
    letters = {str(k).strip().upper(): v for k, v in options.items()}
    text_to_letter: dict[str, set[str]] = {}
    for letter, option_text in letters.items():
        text_to_letter.setdefault(normalize_text(option_text), set()).add(letter)
    text_to_letter.pop("", None)

    text = pred.strip()
    candidates: set[str] = set()

    # The whole answer, or its first line ("B\n\nBecause ..."), is one decorated letter.
    only = _ONLY_LETTER.match(text) or _ONLY_LETTER.match(text.splitlines()[0])
    if only:
        candidates.add(only.group(1).upper())
    for m in _BOXED_LETTER.finditer(text):
        candidates.add(m.group(1).upper())
    leading = _LEADING_LETTER.match(text)
    if leading and not only:
        letter = leading.group(1).upper()
        rest = normalize_text(leading.group(2))
        # The delimiter is required, so the article in "a lesion" never gets here.
        candidates.add(letter)
        if rest and rest in text_to_letter and letter not in text_to_letter[rest]:
            # "B. Glioma" while Glioma is option A: the letter and the text disagree.
            candidates |= text_to_letter[rest]
    for m in _KEYWORD_LETTER.finditer(text):
        if _keyword_letter_ok(m, text):
            candidates.add(m.group(1).upper())
    for m in _PAREN_CAPITAL.finditer(text):
        candidates.add(m.group(1))
    whole = normalize_text(text)
    if whole in text_to_letter:
        candidates |= text_to_letter[whole]

    candidates &= set(letters)
    if len(candidates) == 1:
        return next(iter(candidates))
    return None


def token_f1(pred: str | None, ref: str | None) -> tuple[float, float, float]:
    """(precision, recall, f1) of the normalised word bags of `pred` against `ref`, in that order.

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


# --------------------------------------------------------------------------------------------------
# judging
# --------------------------------------------------------------------------------------------------


def _closed(correct: bool, parsed: str | None) -> Judgement:
    score = 1.0 if correct else 0.0
    return Judgement(correct=correct, parsed=parsed, parse_failure=parsed is None, recall=score, f1=score)


def judge(prediction: str | None, sample: Sample, compat: str | None = None) -> Judgement:
    """Judge `prediction` (the `<answer>` content or raw text) against `sample` by `sample.kind`.

    `compat=None` applies the vitos rules; "medevalkit" / "mmmu" reproduce the kit's rules for comparison
    with published numbers (differences in the module docstring).
    """
    if compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat mode {compat!r}; use one of {COMPAT_MODES}")
    prediction = "" if prediction is None else str(prediction)
    if compat is not None:
        return _judge_medevalkit(prediction, sample, mmmu=(compat == "mmmu"))

    if sample.kind == "yes_no":
        parsed = extract_yes_no(prediction)
        return _closed(parsed is not None and parsed == normalize_text(sample.answer), parsed)
    if sample.kind == "choice":
        if not sample.options:
            raise ValueError(f"sample {sample.id!r} is a choice question without options; the loader must fill them")
        parsed = extract_choice(prediction, sample.options)
        return _closed(parsed is not None and parsed == str(sample.answer).strip().upper(), parsed)
    if sample.kind == "open":
        parsed = normalize_text(prediction)
        _, recall, f1 = token_f1(prediction, sample.answer)
        correct = bool(parsed) and parsed == normalize_text(sample.answer)
        return Judgement(correct=correct, parsed=parsed or None, parse_failure=not parsed, recall=recall, f1=f1)
    raise ValueError(f"sample {sample.id!r} has unknown kind {sample.kind!r}; expected 'yes_no', 'choice' or 'open'")


# --------------------------------------------------------------------------------------------------
# MedEvalKit reproduction (compat). Deliberately keeps that kit's defects; never used for rewards.
# --------------------------------------------------------------------------------------------------

_MEK_ANSWER_PATTERNS = (
    "**answer**:",
    "**answer**",
    "*answer*:",
    "**answer:**",
    "answer is",
    "answer:",
    "答案:",
    "final answer",
    "final answer is",
)


def _mek_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} with balanced braces, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed{")
    begin = i
    while i < len(text):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i]
            depth -= 1
        i += 1
    return None


def _mek_tag(text: str, tag: str) -> str:
    """All <tag>...</tag> contents joined by spaces, or the text itself when there is none."""
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)
    joined = " ".join(found).strip()
    return joined if joined else text


def _mek_parse_response(response: str) -> str:
    response = response.lower()
    if "boxed" in response:
        boxed = _mek_boxed(response)
        response = boxed if boxed is not None else "None"  # the kit's extractor yields the string "None"
    elif "<answer>" in response:
        response = _mek_tag(response, "answer")
    for pattern in _MEK_ANSWER_PATTERNS:
        if pattern in response:
            response = response.split(pattern)[-1]
    return response


def _mek_calculate_f1(prediction: str, ground_truth: str) -> tuple[float, float, float]:
    """The kit's helper, returning (f1, precision, recall) over word SETS -- order kept on purpose."""
    pred_tokens = set(prediction.lower().split())
    ref_tokens = set(ground_truth.lower().split())
    if not pred_tokens or not ref_tokens:
        return 0.0, 0.0, 0.0
    common = pred_tokens & ref_tokens
    precision = len(common) / len(pred_tokens)
    recall = len(common) / len(ref_tokens)
    if precision + recall == 0:
        return 0.0, 0.0, 0.0
    return 2 * precision * recall / (precision + recall), precision, recall


def _mek_multi_choice(options: dict[str, str], answer: str, response: str) -> tuple[bool, str | None]:
    """The kit's `judge_multi_choice` with choices formatted "A. text"; returns (correct, parsed letter)."""
    letters = list(options)
    choices = [f"{k}. {v}".lower() for k, v in options.items()]
    alphas = [k.lower() for k in letters]
    response = response.lower()
    if response.split("\n\n")[0] in alphas:
        response = response.split("\n\n")[0]
    elif response.split("\n\n")[-1].split(".")[0] in alphas:
        response = response.split("\n\n")[-1].split(".")[0]
    response = _mek_parse_response(response).strip().lower().replace("\n", "")
    split_response = response.split(".")[0].split(":")[-1]
    answer = answer.strip().lower()
    if split_response == answer:
        return True, split_response.upper()
    if split_response in alphas:
        return choices[alphas.index(split_response)] == answer, split_response.upper()
    if split_response in choices:
        index = choices.index(split_response)
        return (answer in alphas and split_response == choices[alphas.index(answer)]), letters[index].upper()
    # Unparsed: the most similar option wins (index 0 when every ratio is 0) -- the defect we report.
    best, best_ratio = 0, 0.0
    for i, choice in enumerate(choices):
        ratio = difflib.SequenceMatcher(None, choice, response).ratio()
        if ratio > best_ratio:
            best, best_ratio = i, ratio
    return (alphas[best] == answer or choices[best] == answer), None


def _mmmu_multi_choice(options: dict[str, str], response: str, seed: str) -> tuple[str, bool]:
    """MMMU's `parse_multi_choice_response`; returns (letter, parsed?) with the random fallback seeded."""
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "
    letters = list(options)
    candidates: list[str] = []
    index_ans, with_brackets = True, False
    for letter in letters:
        if f"({letter})" in response:
            candidates.append(letter)
            with_brackets = True
    if not candidates:
        for letter in letters:
            if f" {letter} " in response:
                candidates.append(letter)
    if not candidates and len(response.split()) > 5:
        for letter, text in options.items():
            if text.lower() in response.lower():
                candidates.append(letter)
                index_ans = False
    if not candidates:
        return random.Random(seed).choice(letters), False
    if len(candidates) == 1:
        return candidates[0], True
    if index_ans:
        token = "({})" if with_brackets else " {} "
        positions = [response.rfind(token.format(c)) for c in candidates]
    else:
        positions = [response.lower().rfind(options[c].lower()) for c in candidates]
    return candidates[max(range(len(candidates)), key=lambda i: (positions[i], -i))], True


def _judge_medevalkit(prediction: str, sample: Sample, mmmu: bool) -> Judgement:
    answer = str(sample.answer)
    if sample.kind == "yes_no":
        response = _mek_parse_response(prediction.lower().strip()).replace("\n", "").replace(".", "")
        has_yes, has_no = "yes" in response, "no" in response
        parsed = ("yes" if has_yes else "no") if has_yes != has_no else None
        correct = parsed is not None and answer.lower() in response
        return _closed(correct, parsed)
    if sample.kind == "choice":
        options = {str(k).upper(): str(v) for k, v in (sample.options or {}).items()}
        if not options:
            raise ValueError(f"sample {sample.id!r} is a choice question without options")
        if mmmu:
            letter, parsed_ok = _mmmu_multi_choice(options, prediction, seed=f"mmmu:{sample.id}")
            correct = letter == answer.strip().upper()
            return Judgement(correct, letter if parsed_ok else None, not parsed_ok, float(correct), float(correct))
        correct, parsed = _mek_multi_choice(options, answer, prediction)
        return Judgement(correct, parsed, parsed is None, float(correct), float(correct))
    if sample.kind == "open":
        response = _mek_parse_response(prediction.lower().strip())
        correct = response == answer.lower().strip()
        # The kit unpacks (f1, precision, recall) as (precision, recall, f1): reproduce what it reports.
        reported_precision, reported_recall, reported_f1 = _mek_calculate_f1(response, answer.lower())
        del reported_precision
        return Judgement(correct, response or None, not response.strip(), reported_recall, reported_f1)
    raise ValueError(f"sample {sample.id!r} has unknown kind {sample.kind!r}; expected 'yes_no', 'choice' or 'open'")
