"""`compat="medevalkit"`: MedEvalKit's verdicts, quirks included, per benchmark.

MedEvalKit (github.com/alibaba-damo-academy/MedEvalKit, the kit behind the Lingshu and HuatuoGPT-Vision
anchor scores of REFERENCE.md section 3) judges the raw model `response` in each benchmark's
`cal_metrics` (`utils/<BENCH>/<BENCH>.py`) with helpers of `utils/utils.py` and, for MMMU,
`utils/MMMU/eval_utils.py` + `utils/MMMU/eval_val.py`; `\\boxed{}` content comes from
`mathruler.grader.extract_boxed_content`. This module restates those rules in our own code (nothing is
copied) so a run can be scored the kit's way. Per benchmark (`sample.meta['benchmark']`):

| benchmark  | kit code                          | verdict                                                        |
|------------|-----------------------------------|----------------------------------------------------------------|
| vqa_rad,   | VQA_RAD.py / PATH_VQA.py          | boxed content (if any) else <answer> content; lower + strip;   |
| pathvqa    | `cal_metrics`                     | yes/no reference: `judge_judgement` (exactly one of the        |
|            |                                   | SUBSTRINGS 'yes'/'no', reference among them: "normal" = no);   |
|            |                                   | else `judge_open_end_vqa` exact match after `parse_response`   |
| slake      | SLAKE.py `cal_metrics`            | same extraction, no lower/strip; OPEN: exact match; CLOSED:    |
|            |                                   | raw answer 'yes'/'no' -> `judge_judgement`, anything else      |
|            |                                   | (also "Yes", 是/否) -> `judge_close_end_vqa` exact match       |
| pmc_vqa    | PMC_VQA.py `cal_metrics`          | `judge_multi_choice` on the raw CSV choice cells and the raw   |
|            |                                   | `Answer` cell                                                  |
| omnimedvqa | OmniMedVQA.py `cal_metrics`       | <answer> content, `judge_multi_choice` on "A. text" choices;   |
|            |                                   | the answer is the letter of the LAST option equal to gt_answer |
| medxpertqa | MedXpertQA.py `cal_metrics`       | <answer> content, `judge_multi_choice` on "A. text" choices    |
| mmmu_med   | MMMU/eval_val.py `run_model`,     | <answer> content then boxed content; choice: MMMU's            |
|            | eval_utils.py                     | `parse_multi_choice_response` (random letter when nothing      |
|            | `parse_multi_choice_response`,    | parses); OPEN: `eval_open` receives the response STRING, loops |
|            | `eval_open`                       | over its characters, and so is never correct for a non-empty   |
|            |                                   | reference                                                      |

`judge_multi_choice` (utils/utils.py): a first paragraph (or last paragraph's first sentence) that is a
letter wins; else `parse_response`; the text before the first "." and after the last ":" is compared
with the answer, the letters and the choice strings; when nothing matches, the choice most similar to
the response by `difflib.SequenceMatcher.ratio` is taken (the first choice when every ratio is 0), so an
unreadable or empty answer still scores. `parse_response`: lower-case; `\\boxed{}` content when "boxed"
occurs anywhere (the string "None" when no box parses), else `<answer>` content; then the text after the
last occurrence of each of its answer patterns in turn.

Deviations, all forced: (1) MMMU's fallback draws from Python's global `random` after `set_seed(42)`,
so its pick depends on every earlier call in the run; here it is drawn from `random.Random("mmmu:<id>")`
(deterministic per question; the kit is deterministic only for a whole run in its order). (2) An empty
open response makes the kit crash (`rouge` raises "Hypothesis is empty" in `judge_open_end_vqa`); here
it is wrong and a parse failure. (3) The kit's `calculate_f1` returns (f1, precision, recall) while
callers unpack (precision, recall, f1); `Judgement.recall` / `.f1` carry what the kit REPORTS under
those names (its precision and its recall). (4) With its LLM judge on, SLAKE's `cal_metrics` re-judges
closed questions too and adds them to the closed count twice; that aggregation bug is not reproduced
(`vitos.eval.judge_llm` with style "medevalkit" judges open questions only).

`parse_failure` under compat is True where the kit itself found no answer: yes/no with neither or both
substrings, the similarity / random fallback of a choice, an empty open response.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Mapping, Sequence
from typing import Any

from vitos.answers import Judgement
from vitos.data.sample import Sample

__all__ = [
    "ANSWER_PATTERNS",
    "boxed_content",
    "tag_content",
    "parse_response",
    "judge_multi_choice",
    "judge_judgement",
    "judge_close_end",
    "open_exact_match",
    "reported_f1",
    "mmmu_parse_multi_choice",
    "mmmu_eval_open",
    "kit_fields",
    "kit_judge_input",
    "judge_medevalkit",
]

ANSWER_PATTERNS = (
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
"""`answer_patterns` of utils/utils.py `parse_response`, in the kit's order (each applied in turn)."""


def boxed_content(text: str) -> str:
    """mathruler.grader.extract_boxed_content: the content of the LAST "\\boxed{" up to its matching "}",
    stripped; the string "None" when there is no such box or its braces never balance."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return "None"
    body = text[start + len("\\boxed{") :]
    depth = 0
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                return body[:i].strip()
    return "None"


def tag_content(text: str, tag: str, hard: bool = True) -> str:
    """utils/utils.py `extract` (+ `get_content_between_a_b`): the contents of every complete
    <tag>...</tag> pair, each followed by a space, stripped; an opening tag without a closing one ends the
    scan. Nothing found: the text itself when `hard`, else "". Tags are case-sensitive."""
    if not text:
        return ""
    opening, closing = f"<{tag}>", f"</{tag}>"
    pieces = []
    pos = text.find(opening)
    while pos >= 0:
        end = text.find(closing, pos + len(opening))
        if end < 0:
            break
        pieces.append(text[pos + len(opening) : end] + " ")
        pos = text.find(opening, end + len(closing))
    found = "".join(pieces).strip()
    if found:
        return found
    return text if hard else ""


def parse_response(response: str) -> str:
    """utils/utils.py `parse_response` (see the module docstring)."""
    response = response.lower()
    if "boxed" in response:
        response = boxed_content(response)
    elif "<answer>" in response:
        response = tag_content(response, "answer")
    for pattern in ANSWER_PATTERNS:
        if pattern in response:
            response = response.split(pattern)[-1]
    return response


def judge_multi_choice(choices: Sequence[str], answer: str, response: str) -> tuple[bool, str | None, bool]:
    """utils/utils.py `judge_multi_choice` -> (correct, what was read, similarity fallback used).

    `choices` are the strings the kit builds ("A. Glioma", or PMC-VQA's raw cells); `answer` is the
    kit's answer (a letter, or an option text where the kit left one).
    """
    letters = [chr(ord("a") + i) for i in range(len(choices))]
    response = response.lower()
    paragraphs = response.split("\n\n")
    if paragraphs[0] in letters:
        response = paragraphs[0]
    elif paragraphs[-1].split(".")[0] in letters:
        response = paragraphs[-1].split(".")[0]
    response = parse_response(response)
    lowered = [c.lower() for c in choices]
    response = response.strip().lower().replace("\n", "")
    head = response.split(".")[0].split(":")[-1]
    answer = answer.strip().lower()
    if head == answer:
        return True, head.upper() if head in letters else head, False
    if head in letters:
        return lowered[ord(head) - ord("a")] == answer, head.upper(), False
    if head in lowered:
        index = lowered.index(head)
        correct = answer in letters and head == lowered[ord(answer) - ord("a")]
        return correct, letters[index].upper(), False
    best, best_ratio = 0, 0.0
    for i, choice in enumerate(lowered):
        ratio = difflib.SequenceMatcher(None, choice, response).ratio()
        if ratio > best_ratio:
            best, best_ratio = i, ratio
    return letters[best] == answer or lowered[best] == answer, None, True


def judge_judgement(answer: str, response: str) -> tuple[bool, str | None]:
    """utils/utils.py `judge_judgement` -> (correct, 'yes'/'no' read or None when neither or both occur)."""
    answer = answer.lower()
    text = parse_response(response).replace("\n", "").replace(".", "")
    has_yes, has_no = "yes" in text, "no" in text
    if has_yes == has_no:
        return False, None
    return answer in text, "yes" if has_yes else "no"


def judge_close_end(answer: str, response: str) -> tuple[bool, str]:
    """utils/utils.py `judge_close_end_vqa` -> (exact match after removing newlines and dots, text read)."""
    text = parse_response(response).replace("\n", "").replace(".", "")
    return text == answer.lower(), text


def open_exact_match(answer: str, response: str) -> tuple[bool, str]:
    """The `em` of utils/utils.py `judge_open_end_vqa` -> (parse_response(response) == answer.lower(), text)."""
    text = parse_response(response)
    return text == answer.lower(), text


def reported_f1(response: str, answer: str) -> tuple[float, float]:
    """(reported recall, reported f1) of `judge_open_end_vqa`: `calculate_f1` over word SETS returns
    (f1, precision, recall), unpacked as (precision, recall, f1), so 'recall' is the precision and 'f1'
    the recall. Empty word sets -> (0, 0)."""
    pred = set(parse_response(response).lower().split())
    ref = set(answer.lower().split())
    if not pred or not ref:
        return 0.0, 0.0
    common = pred & ref
    precision, recall = len(common) / len(pred), len(common) / len(ref)
    return precision, recall


def mmmu_parse_multi_choice(
    response: str | None, all_choices: Sequence[str], index2ans: Mapping[str, str], rng: random.Random
) -> tuple[str, bool]:
    """utils/MMMU/eval_utils.py `parse_multi_choice_response` -> (letter, parsed without the random draw)."""
    response = "" if response is None else response
    if "<answer>" in response:
        response = tag_content(response, "answer")
    elif "\\boxed" in response:
        response = boxed_content(response)
    response = response.strip()
    for ch in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(ch)
    response = f" {response} "
    by_index, bracketed = True, False
    candidates: list[str] = []
    for c in all_choices:
        if f"({c})" in response:
            candidates.append(c)
            bracketed = True
    if not candidates:
        candidates = [c for c in all_choices if f" {c} " in response]
    if not candidates and len(response.split()) > 5:
        for c, text in index2ans.items():
            if text.lower() in response.lower():
                candidates.append(c)
                by_index = False
    if not candidates:
        return rng.choice(list(all_choices)), False
    if len(candidates) == 1:
        return candidates[0], True
    if by_index:
        needle = "({})" if bracketed else " {} "
        starts = [response.rfind(needle.format(c)) for c in candidates]
    else:
        starts = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
    return candidates[starts.index(max(starts))], True


def _mmmu_normalize(value: str) -> list[Any]:
    """utils/MMMU/eval_utils.py `normalize_str`: a number -> [its float rounded to 2 places]; a one-letter
    string -> [" x", "x "]; else [lower-cased string]."""
    value = value.strip()
    try:
        number = float(value.replace(",", ""))
    except ValueError:
        lowered = value.lower()
        return [" " + lowered, lowered + " "] if len(lowered) == 1 else [lowered]
    return [round(number, 2)]


def mmmu_eval_open(gold: str | list[str], parsed_pred: Any) -> bool:
    """utils/MMMU/eval_utils.py `eval_open`, called by `eval_val.py` with the response STRING as
    `parsed_pred`: the loop runs over its characters, so a string reference is matched only by the empty
    string and a number reference never."""
    answers: list[Any] = []
    for g in gold if isinstance(gold, list) else [gold]:
        answers += _mmmu_normalize(g)
    for pred in parsed_pred:
        if isinstance(pred, str):
            if any(isinstance(a, str) and a in pred for a in answers):
                return True
        elif pred in answers:
            return True
    return False


# --------------------------------------------------------------------------------------------------
# per benchmark
# --------------------------------------------------------------------------------------------------


def kit_fields(sample: Sample, benchmark: str | None = None) -> dict[str, Any]:
    """What the kit would know about `sample`: the loader's `meta['kit']`, else a default derived from
    the sample (choice -> "A. text" choices and the letter; otherwise the answer) for hand-made samples."""
    kit = dict(sample.meta.get("kit") or {})
    name = benchmark or sample.meta.get("benchmark")
    kit.setdefault("benchmark", name)
    if sample.kind == "choice":
        options = sample.options or {}
        kit.setdefault("choices", [f"{k}. {v}" for k, v in options.items()])
        kit.setdefault("all_choices", list(options))
        kit.setdefault("index2ans", dict(options))
        kit.setdefault("question_type", "multiple-choice")
    else:
        kit.setdefault("question_type", "open")
    kit.setdefault("answer", str(sample.answer))
    kit.setdefault("answer_type", "CLOSED" if sample.closed else "OPEN")
    return kit


def _pre_extract(response: str) -> str:
    """VQA_RAD.py / SLAKE.py / PATH_VQA.py `cal_metrics`: boxed content, else <answer> content."""
    box = boxed_content(response)
    if box != "None":
        return box
    if "<answer>" in response:
        return tag_content(response, "answer")
    return response


def _closed(correct: bool, parsed: str | None, failure: bool) -> Judgement:
    score = float(correct)
    return Judgement(correct, parsed, failure, score, score, "kit_fallback" if failure else None)


def _open(answer: str, response: str) -> Judgement:
    correct, text = open_exact_match(answer, response)
    recall, f1 = reported_f1(response, answer)
    failure = not text.strip()
    return Judgement(correct and not failure, text or None, failure, recall, f1, "empty" if failure else None)


def _vqa_rad(response: str, kit: Mapping[str, Any]) -> Judgement:
    response = _pre_extract(response).lower().strip()
    answer = str(kit["answer"]).lower().strip()
    if answer in ("yes", "no"):
        correct, parsed = judge_judgement(answer, response)
        return _closed(correct, parsed, parsed is None)
    return _open(answer, response)


def _slake(response: str, kit: Mapping[str, Any]) -> Judgement:
    response = _pre_extract(response)
    answer = str(kit["answer"])
    if kit.get("answer_type") == "OPEN":
        return _open(answer, response)
    if answer in ("yes", "no"):
        correct, parsed = judge_judgement(answer, response)
        return _closed(correct, parsed, parsed is None)
    correct, text = judge_close_end(answer, response)
    return _closed(correct, text or None, not text)


def _multi_choice(response: str, kit: Mapping[str, Any], extract_answer: bool) -> Judgement:
    if extract_answer:
        response = tag_content(response, "answer")
    correct, parsed, fallback = judge_multi_choice(list(kit["choices"]), str(kit["answer"]), response)
    return _closed(correct, parsed, fallback)


def _mmmu(response: str, kit: Mapping[str, Any], sample_id: str) -> Judgement:
    if "<answer>" in response:
        response = tag_content(response, "answer")
    box = boxed_content(response)
    if box != "None":
        response = box
    if kit.get("question_type") == "multiple-choice":
        rng = random.Random(f"mmmu:{sample_id}")
        letter, ok = mmmu_parse_multi_choice(response, kit["all_choices"], kit["index2ans"], rng)
        correct = letter == kit["answer"]
        return _closed(correct, letter if ok else None, not ok)
    correct = mmmu_eval_open(kit["answer"], response)
    failure = not response.strip()
    return Judgement(correct, response.strip() or None, failure, float(correct), float(correct),
                     "empty" if failure else None)


def kit_judge_input(response: str | None, sample: Sample) -> str:
    """The text the kit hands its LLM judge as "the user's answer": the boxed or <answer> content of the
    response (VQA-RAD / PathVQA: lower-cased and stripped), as in their `cal_metrics`."""
    text = _pre_extract("" if response is None else str(response))
    if sample.meta.get("benchmark") == "slake":
        return text
    return text.lower().strip()


def judge_medevalkit(response: str | None, sample: Sample, benchmark: str | None = None) -> Judgement:
    """The kit's verdict on the raw `response` for `sample` of `benchmark` (default
    `sample.meta['benchmark']`; unknown or missing -> VQA-RAD's rules for yes/no and open questions and
    MedXpertQA's for choice questions)."""
    response = "" if response is None else str(response)
    if sample.kind not in ("yes_no", "choice", "open"):
        raise ValueError(f"sample {sample.id!r} has unknown kind {sample.kind!r}; expected 'yes_no', 'choice' or 'open'")
    if sample.kind == "choice" and not sample.options and not (sample.meta.get("kit") or {}).get("choices"):
        raise ValueError(f"sample {sample.id!r} is a choice question without options")
    kit = kit_fields(sample, benchmark)
    name = kit["benchmark"]
    if name == "mmmu_med":
        return _mmmu(response, kit, str(sample.id))
    if name == "slake":
        return _slake(response, kit)
    if name == "pmc_vqa":
        return _multi_choice(response, kit, extract_answer=False)
    if name in ("omnimedvqa", "medxpertqa"):
        return _multi_choice(response, kit, extract_answer=True)
    if sample.kind == "choice":
        return _multi_choice(response, kit, extract_answer=True)
    return _vqa_rad(response, kit)
