"""Optional LLM judge for OPEN questions, through any OpenAI-compatible chat-completions endpoint.

Off by default: exact match after normalisation (`vitos.answers.judge`) is the reported open accuracy.
Some papers judge open answers with an LLM instead (MedEvalKit offers it), because "left lung" vs
"the left lung base" is a matter of meaning, not of strings. With `url` set, the runner asks the LLM
about every open question whose prediction is non-empty and not already an exact match (an exact match
is correct under any sane judge, so it costs no call); closed questions never reach the LLM.

The endpoint is `POST {url}/chat/completions` (OpenAI's schema; vLLM, llama.cpp server, LiteLLM and
OpenAI itself serve it), temperature 0, one short reply. The API key is read from the environment
variable named by `api_key_env` at call time; it is sent only in the Authorization header and never
written to a file, a log line or an error message. Only the Python standard library (urllib) is used.

    judge = LLMJudge(LLMJudgeConfig(url="http://127.0.0.1:8000/v1", model="qwen2.5-72b-instruct"))
    judge("Which lung is affected?", reference="left", prediction="the left lung")   # -> True

A reply whose first word is neither yes nor no raises `JudgeError` (the run stops and can be resumed)
rather than silently mixing the LLM's verdicts with the exact-match rule.

Style "medevalkit" (set by `vitos eval --protocol medevalkit`) follows the kit's LLM judging
(utils/utils.py `get_compare_messages`, `openai_llm`; VQA_RAD.py / SLAKE.py / PATH_VQA.py `cal_metrics`):
one user message asking for `<think>...</think><judge>0/1</judge>` (0 = correct; our paraphrase of the
kit's wording, same reply format and decision), and the verdict is correct iff the `<judge>` content -- or
the whole reply when there is no such tag -- is exactly "0"; anything else is wrong, never an error. The
runner then asks about EVERY open question of the benchmarks in `benchmarks` (the kit: VQA-RAD, SLAKE,
PathVQA), exact matches included, as the kit does.

Bounds: every request has a timeout (`timeout_s`) and at most `max_retries` retries; question, reference
and prediction are cut to `max_chars` characters each; a reply longer than 1 MiB is refused; a run makes
at most `max_calls` requests (then `JudgeError`: raise the bound or resume).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

__all__ = [
    "LLMJudgeConfig",
    "LLMJudge",
    "JudgeError",
    "JUDGE_SYSTEM",
    "KIT_BENCHMARKS",
    "judge_messages",
    "kit_judge_messages",
    "parse_verdict",
    "parse_kit_verdict",
]

MAX_REPLY_BYTES = 1 << 20
KIT_BENCHMARKS = ("vqa_rad", "slake", "pathvqa")
"""The benchmarks whose open answers MedEvalKit's anchors judged with an LLM (`use_llm_judge`)."""

JUDGE_SYSTEM = (
    "You grade answers to medical visual questions. Compare the model's answer with the reference answer. "
    "The model's answer is correct when it means the same as the reference (synonyms, abbreviations and "
    "extra harmless words are fine); it is wrong when it names something different, is vaguer in a way that "
    "changes the answer, or hedges between options. Reply with one word: yes or no."
)


class JudgeError(RuntimeError):
    """The LLM judge could not give a verdict (endpoint down, bad reply); the message never holds the key."""


@dataclass
class LLMJudgeConfig:
    """Where and how to ask an LLM whether an open answer is correct."""

    url: str | None = None
    """Base URL of an OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1); None turns the judge off."""
    model: str = "gpt-4o-mini"
    """Model name sent in the request."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (the key itself is never stored or logged)."""
    timeout_s: float = 60.0
    """Seconds to wait for one reply."""
    max_retries: int = 2
    """Extra attempts after a failed request (network error or HTTP 5xx/429), with 1 s, 2 s ... waits."""
    style: str = "vitos"
    """'vitos' (yes/no reply, asked only when exact match says wrong) or 'medevalkit' (the kit's <judge>0/1
    reply, asked about every open question)."""
    benchmarks: list[str] | None = None
    """Benchmarks whose open questions the judge decides (None = every benchmark; the kit: KIT_BENCHMARKS)."""
    max_calls: int | None = 20000
    """Most requests one run may make (None = unbounded)."""
    max_chars: int = 2000
    """Question, reference and prediction are each cut to this many characters in a request."""


def judge_messages(question: str, reference: str, prediction: str) -> list[dict[str, str]]:
    """The chat messages sent for one open question."""
    user = (
        f"Question: {question}\nReference answer: {reference}\nModel answer: {prediction}\n"
        "Is the model answer correct?"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def kit_judge_messages(question: str, reference: str, prediction: str) -> list[dict[str, str]]:
    """The one user message of style 'medevalkit' (a paraphrase of the kit's `get_compare_messages`)."""
    prompt = (
        "Decide whether the user's answer to the question is correct, given the standard answer. An answer "
        "that expresses the same meaning as the standard answer, or an acceptable reading of it, is correct.\n\n"
        f"The question is: {question}\n\nThe standard answer: {reference}\n\nThe user's answer: {prediction}\n\n"
        "Reply exactly in this format (0 means correct, 1 means incorrect):\n"
        "<think>{your brief reasoning}</think>\n<judge>{0/1}</judge>"
    )
    return [{"role": "user", "content": prompt}]


def parse_kit_verdict(reply: str | None) -> bool:
    """The kit's decision: the <judge> contents (all pairs, space-joined, stripped) -- or the whole reply
    when there is no complete pair -- equal to "0" means correct; anything else, None included, is wrong."""
    if not reply:
        return False
    found = re.findall(r"<judge>(.*?)</judge>", reply, flags=re.DOTALL)
    text = " ".join(found).strip() if found else ""
    return (text if text else reply) == "0"


_FIRST_WORD = re.compile(r"[A-Za-z]+")


def parse_verdict(reply: str) -> bool | None:
    """True / False from a reply whose first word is yes / no (any case, punctuation around it); else None."""
    match = _FIRST_WORD.search(reply or "")
    word = match.group(0).lower() if match else ""
    return {"yes": True, "no": False}.get(word)


class LLMJudge:
    """Callable judge: `judge(question, reference, prediction) -> bool`. Counts its requests in `calls`."""

    def __init__(self, cfg: LLMJudgeConfig):
        if not cfg.url:
            raise ValueError("LLMJudge needs cfg.url (the judge is off when url is None)")
        if not cfg.url.startswith(("http://", "https://")):
            raise ValueError(f"judge url must start with http:// or https://, got {cfg.url!r}")
        if cfg.style not in ("vitos", "medevalkit"):
            raise ValueError(f"judge style must be 'vitos' or 'medevalkit', got {cfg.style!r}")
        self.cfg = cfg
        self.endpoint = cfg.url.rstrip("/") + "/chat/completions"
        self.calls = 0

    def __repr__(self) -> str:  # never show a key, even by accident
        return f"LLMJudge(endpoint={self.endpoint!r}, model={self.cfg.model!r})"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, body: bytes) -> dict:
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                time.sleep(float(attempt))
            request = urllib.request.Request(self.endpoint, data=body, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                    data = response.read(MAX_REPLY_BYTES + 1)
                if len(data) > MAX_REPLY_BYTES:
                    last = f"the reply is longer than {MAX_REPLY_BYTES} bytes"
                    break
                return json.loads(data.decode("utf-8"))
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code} {err.reason}"
                if err.code not in (429,) and err.code < 500:
                    break  # a 4xx other than rate limiting will not get better by retrying
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            except json.JSONDecodeError:
                last = "the reply is not JSON"
                break
        raise JudgeError(f"LLM judge at {self.endpoint} failed: {last} (check --judge-url and that the server runs)")

    def asks_about(self, benchmark: str) -> bool:
        """Whether this judge decides the open questions of `benchmark`."""
        return self.cfg.benchmarks is None or benchmark in self.cfg.benchmarks

    def __call__(self, question: str, reference: str, prediction: str) -> bool:
        if self.cfg.max_calls is not None and self.calls >= self.cfg.max_calls:
            raise JudgeError(
                f"LLM judge call budget of {self.cfg.max_calls} requests is spent; raise judge.max_calls and resume"
            )
        cut = self.cfg.max_chars
        question, reference, prediction = (str(t)[:cut] for t in (question, reference, prediction))
        kit = self.cfg.style == "medevalkit"
        messages = (kit_judge_messages if kit else judge_messages)(question, reference, prediction)
        body = json.dumps(
            {"model": self.cfg.model, "messages": messages, "temperature": 0, "max_tokens": 256 if kit else 4}
        ).encode("utf-8")
        self.calls += 1
        reply = self._post(body)
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"LLM judge at {self.endpoint} replied without choices[0].message.content") from None
        if kit:
            return parse_kit_verdict(text)
        verdict = parse_verdict(text)
        if verdict is None:
            raise JudgeError(f"LLM judge reply {str(text)[:60]!r} does not start with yes or no")
        return verdict
