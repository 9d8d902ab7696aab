"""The rule cases of docs/scoring.md: raw completion -> expected verdict of the honest judge.

Each case names the rule(s) of docs/scoring.md it exercises (`tests/test_scoring_rules.py` checks that
every rule id in the document has at least one case or a dedicated test). Expected verdicts:
"right" (correct), "wrong" (an answer was read and it is not the reference) and "fail" (a counted parse
failure: no answer could be read). `parsed` is the extracted answer where the rule fixes it.

Kept free of test machinery so a script can replay the cases against another judge (the closing note of
issue 13 counts how many the judge before this change got wrong).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vitos.data.sample import Sample

OPTIONS = {"A": "Glioma", "B": "Meningioma", "C": "Metastasis", "D": "Abscess"}
NESTED = {"A": "Lung", "B": "Lung cancer", "C": "Liver", "D": "Liver cyst"}


def yes_no(answer: str) -> Sample:
    return Sample(id="yn", images=[], question="Is there a fracture?", answer=answer, kind="yes_no")


def choice(answer: str, options: dict[str, str] | None = None) -> Sample:
    return Sample(id="mc", images=[], question="Diagnosis?", answer=answer, kind="choice", options=options or OPTIONS)


def open_(answer: str, answers: list[str] | None = None) -> Sample:
    meta = {"answers": answers} if answers else {}
    return Sample(id="op", images=[], question="Which organ?", answer=answer, kind="open", meta=meta)


@dataclass
class Case:
    rules: tuple[str, ...]
    completion: str
    sample: Sample
    expected: str  # "right" | "wrong" | "fail"
    parsed: str | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


CASES: list[Case] = [
    # ---------------------------------------------------------------- L: where the answer is taken from
    Case(("L1",), "<think>dural tail</think><answer>B</answer>", choice("B"), "right", "B"),
    Case(("L1",), "<answer>A</answer> hmm <answer>B</answer>", choice("B"), "right", "B", "last tag wins"),
    Case(("L1", "L6"), "<think>x</think><answer> </answer>", choice("B"), "fail", note="empty tag"),
    Case(("L2",), "<think>dural tail</think><answer>B", choice("B"), "right", "B", "unclosed tag"),
    Case(("L2",), "<think>ok</think><answer>The left", open_("left lung"), "wrong", note="truncated open answer"),
    Case(("L3",), "<think>It enhances, with a dural tail.</think>\nB", choice("B"), "right", "B"),
    Case(("L3",), "<think>Maybe A? No.</think> The answer is B.", choice("B"), "right", "B", "think text ignored"),
    Case(("L3",), "<think>yes it is broken</think>no", yes_no("no"), "right", "no"),
    Case(("L3", "L7"), "<think>t</think><box>[[0.1,0.1,0.5,0.5]]</box>", choice("B"), "fail", note="box only"),
    Case(("L4",), "<think>The lesion enhances; the answer is B but let me che", choice("B"), "fail",
         note="cut inside think: no answer"),
    Case(("L4",), "<think>yes", yes_no("yes"), "fail"),
    Case(("L5",), "B", choice("B"), "right", "B"),
    Case(("L5",), "No.", yes_no("no"), "right", "no"),
    Case(("L5", "L6"), "", open_("liver"), "fail"),
    Case(("L6",), "   \n ", yes_no("no"), "fail"),
    Case(("L7",), "<think>a</think><box>[[0.1,0.1,0.5,0.5]]</box> yes", yes_no("yes"), "right", "yes"),
    # ---------------------------------------------------------------- U: unwrapping markers
    Case(("U1",), "\\boxed{B}", choice("B"), "right", "B"),
    Case(("U1",), "\\boxed{ B }", choice("B"), "right", "B", "inner spaces"),
    Case(("U1",), "The final result is \\boxed{\\text{left lung}}.", open_("left lung"), "right"),
    Case(("U1",), "\\boxed{yes}", yes_no("yes"), "right", "yes"),
    Case(("U1",), "First \\boxed{A}, on reflection \\boxed{C}", choice("C"), "right", "C", "last box wins"),
    Case(("U2",), "The answer is B.", choice("B"), "right", "B"),
    Case(("U2",), "Answer: no", yes_no("no"), "right", "no"),
    Case(("U2",), "Final answer: liver", open_("liver"), "right"),
    Case(("U2",), "The final answer is C", choice("C"), "right", "C"),
    Case(("U2",), "The answer is A. Actually, the answer is C.", choice("C"), "right", "C", "last marker wins"),
    Case(("U2",), "It could be A or B, but the answer is B.", choice("B"), "right", "B"),
    Case(("U2",), "The answer is B. This answer is supported by the dural tail.", choice("B"), "right", "B",
         "a later marker that yields no answer does not win"),
    Case(("U2",), "答案: 肝脏", open_("肝脏"), "right"),
    Case(("U3",), "The answer is A. \\boxed{B}", choice("B"), "right", "B", "boxed beats markers"),
    Case(("U4",), "**Answer:** **B**", choice("B"), "right", "B"),
    Case(("U4",), "**Yes**", yes_no("yes"), "right", "yes"),
    Case(("U5",), "The answer is the left lung. The right lung is clear.", open_("left lung"), "right"),
    Case(("U5",), "The answer is 2.5 cm.", open_("2.5 cm"), "right", note="a decimal point is not a sentence end"),
    # ---------------------------------------------------------------- N: Unicode and normalisation
    Case(("N1",), "Ｂ", choice("B"), "right", "B", "full-width letter"),
    Case(("N1",), "ｙｅｓ", yes_no("yes"), "right", "yes"),
    Case(("N1",), "left\u00a0lung", open_("left lung"), "right", note="non-breaking space"),
    Case(("N1",), "＜answer＞B＜/answer＞", choice("B"), "right", "B", "full-width tags"),
    Case(("N1", "O4"), "２", open_("2"), "right", note="full-width digit"),
    Case(("N2",), "ye\u200bs", yes_no("yes"), "right", "yes", "zero-width space"),
    Case(("N3",), "The Left-Lung.", open_("left lung"), "right"),
    # ---------------------------------------------------------------- Y: yes / no
    Case(("Y1",), "No, there is no fracture.", yes_no("no"), "right", "no"),
    Case(("Y1",), "Yes, there is no fracture line but a dislocation.", yes_no("yes"), "right", "yes"),
    Case(("Y1",), "No fracture is seen.", yes_no("no"), "right", "no", "clause-initial no"),
    Case(("Y1",), "I think yes", yes_no("yes"), "right", "yes", "clause-final yes"),
    Case(("Y1",), "yes", yes_no("no"), "wrong", "yes"),
    Case(("Y2",), "Yes or no", yes_no("yes"), "fail", note="asserts both"),
    Case(("Y2",), "yes/no", yes_no("no"), "fail"),
    Case(("Y2",), "Yes. Actually, no.", yes_no("no"), "fail", note="contradiction is not credited"),
    Case(("Y2",), "no ... well, yes", yes_no("no"), "fail"),
    Case(("Y3",), "Yep.", yes_no("yes"), "right", "yes"),
    Case(("Y3",), "Nope, it is intact.", yes_no("no"), "right", "no"),
    Case(("Y4",), "There is no fracture.", yes_no("no"), "fail", note="negation without yes/no: unsupported"),
    Case(("Y4",), "Correct.", yes_no("yes"), "fail", note="'correct' is not read as yes"),
    Case(("Y4",), "Negative", yes_no("no"), "fail"),
    Case(("Y5",), "normal", yes_no("no"), "fail", note="substring 'no' never counts"),
    Case(("Y5",), "nodule", yes_no("no"), "fail"),
    Case(("Y5",), "not sure", yes_no("no"), "fail"),
    # ---------------------------------------------------------------- C: multiple choice
    Case(("C1",), "(B)", choice("B"), "right", "B"),
    Case(("C1",), "b", choice("B"), "right", "B"),
    Case(("C1",), "**C**", choice("C"), "right", "C"),
    Case(("C2",), "B\n\nThe enhancing dural tail suggests it.", choice("B"), "right", "B"),
    Case(("C3",), "B. Meningioma", choice("B"), "right", "B"),
    Case(("C3",), "B, because of the dural tail.", choice("B"), "right", "B", "letter + punctuation + reason"),
    Case(("C3",), "B because of the dural tail", choice("B"), "right", "B", "letter + reason"),
    Case(("C3",), "B) it enhances", choice("B"), "right", "B"),
    Case(("C3",), "C - Metastasis", choice("C"), "right", "C"),
    Case(("C3",), "A. Meningioma", choice("B"), "fail", note="letter and text disagree"),
    Case(("C4",), "I would choose option D", choice("D"), "right", "D"),
    Case(("C4",), "I'd pick B.", choice("B"), "right", "B"),
    Case(("C5",), "Given the dural tail I go with (B) here.", choice("B"), "right", "B"),
    Case(("C6",), "A. Glioma\nB. Meningioma\nC. Metastasis\nD. Abscess\nThe dural tail points to B.",
         choice("B"), "right", "B", "restates the options, then picks"),
    Case(("C6",), "(A) Glioma (B) Meningioma (C) Metastasis (D) Abscess -> C", choice("C"), "right", "C"),
    Case(("C6",), "A. Glioma\nB. Meningioma\nC. Metastasis\nD. Abscess", choice("B"), "fail",
         note="restating every option picks none"),
    Case(("C7",), "glioma", choice("A"), "right", "A", "the option text instead of its letter"),
    Case(("C7",), "The abscess.", choice("D"), "right", "D"),
    Case(("C7",), "lung cancer", choice("B", NESTED), "right", "B", "one option's text contains another's"),
    Case(("C8",), "This is most likely a meningioma given the dural tail.", choice("B"), "right", "B",
         "option text inside a sentence"),
    Case(("C8",), "The mass is lung cancer.", choice("B", NESTED), "right", "B", "longest option text wins"),
    Case(("C8",), "A simple liver cyst.", choice("D", NESTED), "right", "D"),
    Case(("C8",), "Either a glioma or a metastasis.", choice("A"), "fail", note="two option texts"),
    Case(("C8",), "I would say B, since meningiomas show a dural tail unlike gliomas.", choice("B"), "right", "B",
         "texts are a fallback only: the letter decides"),
    Case(("C9",), "A or B", choice("A"), "fail"),
    Case(("C9",), "A, C", choice("A"), "fail", note="several letters"),
    Case(("C9",), "B and D", choice("B"), "fail"),
    Case(("C10",), "E", choice("A"), "fail", note="not an option letter"),
    Case(("C11",), "the answer is a lesion", choice("A"), "fail", note="the article a is not option A"),
    Case(("C11",), "Vitamin C levels are low", choice("C"), "fail"),
    Case(("C12",), "I cannot tell from this image.", choice("A"), "fail", note="never mapped to a similar option"),
    Case(("C12",), "", choice("A"), "fail"),
    # ---------------------------------------------------------------- O: open answers
    Case(("O1",), "Left lung", open_("left lung"), "right"),
    Case(("O1",), "the liver.", open_("Liver"), "right", note="articles, punctuation, case"),
    Case(("O1", "O6"), "left upper lung", open_("left lung"), "wrong", note="containment is not enough; F1 0.8"),
    Case(("O2",), "6.0", open_("6", answers=["6", "6.0"]), "right"),
    Case(("O2",), "CT scan", open_("CT", answers=["CT", "CT scan"]), "right", note="any accepted variant"),
    Case(("O3",), "Right lung, left lung", open_("Left Lung, Right Lung"), "right", note="order-free list"),
    Case(("O3",), "liver and kidney", open_("Kidney, Liver"), "right"),
    Case(("O3",), "liver, spleen", open_("Kidney, Liver"), "wrong"),
    Case(("O3",), "liver", open_("Kidney, Liver"), "wrong", note="a subset is not the list"),
    Case(("O4",), "4 lesions", open_("4"), "right", note="numeric reference: the one number in the answer"),
    Case(("O4",), "The answer is 0.333", open_("0.33"), "right", note="rounded to the reference's decimals"),
    Case(("O4",), "6.4", open_("6"), "wrong"),
    Case(("O4",), "1,200 mg", open_("1200"), "right"),
    Case(("O4",), "four", open_("4"), "right", note="a number word as the whole answer"),
    Case(("O4",), "between 2 and 3", open_("2"), "fail", note="several numbers: none is chosen"),
    Case(("O4",), "x = 3 + 4 = 7", open_("7"), "right", note="the value after the last '='"),
    Case(("O5",), "<answer></answer>", open_("liver"), "fail"),
]
