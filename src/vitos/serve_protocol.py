"""The HTTP protocol of `vitos serve`: OpenAI chat-completion requests in, completions (+ a `vitos` field) out.

Pure functions, no model and no sockets, so every refusal is tested on hand-written bodies. A request is an
OpenAI `/v1/chat/completions` body whose last user message holds one text part and one image part; the image
must be inline (a `data:image/...;base64,` URL: the server fetches nothing). Optional `vitos` fields:

    {"model": "vitos", "max_tokens": 128, "temperature": 0,
     "messages": [{"role": "user", "content": [
         {"type": "text", "text": "Is there a lesion in the liver?"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR..."}}]}],
     "vitos": {"kind": "yes_no", "options": {"A": "...", "B": "..."}}}

The reply's `choices[0].message.content` is the parsed answer (the answer pass's full text when it wrote no
<answer> tag); `vitos` carries the boxes, the kept / total visual tokens, both branches' text and the fallback.
Every refusal is a `RequestError` with the HTTP status and a message that says what to fix.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from vitos.images import DEFAULT_MAX_PIXELS, ImageError, load_image_bytes

KINDS = ("yes_no", "choice", "open")


class RequestError(ValueError):
    """A request the server refuses: HTTP `status` and a message naming the field and the fix."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclass
class Limits:
    """What one request may carry."""

    max_body_bytes: int = 32 * 2**20
    """Largest request body (base64 images are ~4/3 of their file size); larger is a 413."""
    max_image_bytes: int = 20 * 2**20
    """Largest decoded image file."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Largest image (width x height)."""
    max_tokens: int = 1024
    """Largest `max_tokens` a request may ask for (per pass)."""


@dataclass
class ChatRequest:
    """One parsed request: the question, its image and how to answer it."""

    question: str
    image: Any
    """The decoded 8-bit RGB PIL image."""
    kind: str = "open"
    options: dict[str, str] | None = None
    max_tokens: int | None = None
    """Per-pass token budget (None: the server's)."""
    temperature: float = 0.0
    model: str = "vitos"

    def sampling_key(self) -> tuple:
        """Requests with equal keys can share one batched decode."""
        return (self.max_tokens, self.temperature)


_DATA_URL = re.compile(r"^data:(image/[\w.+-]+|application/dicom|application/octet-stream);base64,(.*)$", re.S)


def parse_chat_request(body: bytes, limits: Limits | None = None) -> ChatRequest:
    """Bytes of a POST body -> ChatRequest, or RequestError (400 malformed, 413 too large)."""
    limits = limits or Limits()
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"request body is {len(body):,} bytes, over the server's limit of "
                                f"{limits.max_body_bytes:,}; send a smaller image", "request_too_large")
    try:
        req = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"the body is not JSON ({err}); send an OpenAI chat-completion request") from None
    if not isinstance(req, dict):
        raise RequestError(400, "the body must be a JSON object with a `messages` list")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "missing field `messages`: a list with one user message holding a text part and an "
                                "image_url part")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise RequestError(400, "`messages` has no message with role 'user'")
    content = users[-1].get("content")
    if isinstance(content, str) or not isinstance(content, list):
        raise RequestError(400, "the user message needs `content` as a list of parts: one {'type': 'text'} and one "
                                "{'type': 'image_url'}; a plain string has no image")
    texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    images = [p.get("image_url") for p in content if isinstance(p, dict) and p.get("type") == "image_url"]
    if len(texts) != 1 or not isinstance(texts[0], str) or not texts[0].strip():
        raise RequestError(400, f"the user message needs exactly one non-empty text part (the question), got {len(texts)}")
    if len(images) != 1:
        raise RequestError(400, f"the user message needs exactly one image_url part, got {len(images)}")
    url = images[0].get("url") if isinstance(images[0], dict) else images[0]
    image = _decode_image(url, limits)
    extra = req.get("vitos") or {}
    if not isinstance(extra, dict):
        raise RequestError(400, "`vitos` must be an object, e.g. {\"kind\": \"yes_no\"}")
    options = extra.get("options")
    if options is not None and (not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values())):
        raise RequestError(400, "`vitos.options` must map letters to option texts, e.g. {\"A\": \"glioma\"}")
    kind = extra.get("kind") or ("choice" if options else "open")
    if kind not in KINDS:
        raise RequestError(400, f"`vitos.kind` must be one of {list(KINDS)}, got {kind!r}")
    max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or
                                   not 1 <= max_tokens <= limits.max_tokens):
        raise RequestError(400, f"`max_tokens` must be an integer in [1, {limits.max_tokens}], got {max_tokens!r}")
    temperature = req.get("temperature", 0.0)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
        raise RequestError(400, f"`temperature` must be a number in [0, 2], got {temperature!r}")
    if req.get("n", 1) != 1 or req.get("stream"):
        raise RequestError(400, "only n = 1 and stream = false are supported")
    return ChatRequest(texts[0].strip(), image, kind, {str(k): v for k, v in options.items()} if options else None,
                       max_tokens, float(temperature), str(req.get("model") or "vitos"))


def _decode_image(url: Any, limits: Limits) -> Any:
    if not isinstance(url, str):
        raise RequestError(400, "image_url needs a `url` string: data:image/png;base64,<bytes>")
    m = _DATA_URL.match(url.strip())
    if not m:
        scheme = url.split(":", 1)[0] if ":" in url else url[:20]
        raise RequestError(400, f"image_url must be an inline data URL (data:image/<type>;base64,...), not {scheme!r}: "
                                "the server fetches nothing")
    try:
        data = base64.b64decode(m.group(2), validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, f"image_url: the base64 data is malformed ({err})") from None
    try:
        return load_image_bytes(data, name="image_url", max_pixels=limits.max_pixels, max_bytes=limits.max_image_bytes)
    except ImageError as err:
        status = 413 if "over the limit" in str(err) or "max_pixels" in str(err) else 400
        raise RequestError(status, str(err), "invalid_image") from None


def completion_body(request_id: str, model: str, answer: Any, created: int | None = None) -> dict[str, Any]:
    """An OpenAI `chat.completion` object for one `vitos.pipeline.Answer`, with the `vitos` extra field."""
    content = answer.answer if answer.answer is not None else answer.answer_text
    return {
        "id": request_id, "object": "chat.completion", "created": int(created or time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "vitos": {
            "answer": answer.answer, "answer_text": answer.answer_text, "grounding_text": answer.grounding_text,
            "boxes": answer.boxes, "box_images": answer.box_images, "fallback": answer.fallback,
            "visual_tokens_kept": answer.visual_tokens_kept, "visual_tokens_total": answer.visual_tokens_total,
            "kept_ratio": answer.visual_tokens_kept / max(1, answer.visual_tokens_total),
        },
    }


def error_body(err: RequestError | Exception, status: int | None = None) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "code"}}."""
    code = getattr(err, "status", status or 500)
    return {"error": {"message": str(err), "type": getattr(err, "kind", "server_error"), "code": code}}
