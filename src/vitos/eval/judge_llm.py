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
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

__all__ = ["LLMJudgeConfig", "LLMJudge", "JudgeError", "JUDGE_SYSTEM", "judge_messages", "parse_verdict"]

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


def judge_messages(question: str, reference: str, prediction: str) -> list[dict[str, str]]:
    """The chat messages sent for one open question."""
    user = (
        f"Question: {question}\nReference answer: {reference}\nModel answer: {prediction}\n"
        "Is the model answer correct?"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


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
                    return json.loads(response.read().decode("utf-8"))
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

    def __call__(self, question: str, reference: str, prediction: str) -> bool:
        body = json.dumps(
            {
                "model": self.cfg.model,
                "messages": judge_messages(question, reference, prediction),
                "temperature": 0,
                "max_tokens": 4,
            }
        ).encode("utf-8")
        self.calls += 1
        reply = self._post(body)
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"LLM judge at {self.endpoint} replied without choices[0].message.content") from None
        verdict = parse_verdict(text)
        if verdict is None:
            raise JudgeError(f"LLM judge reply {str(text)[:60]!r} does not start with yes or no")
        return verdict
