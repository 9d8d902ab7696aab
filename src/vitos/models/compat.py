"""Differences between the transformers releases vitos supports (pyproject: >=5.19, <5.25), in one place.

transformers 5.24 renamed the decoder's KV-cache argument and output field from `past_key_values` to
`cache` (5.19-5.23 know only the old names; 5.24 accepts both and warns on the old output field). Code
that calls a decoder directly goes through these two functions instead of naming either spelling.
"""

from __future__ import annotations

import dataclasses
import inspect
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=None)
def _cache_kwarg_of(forward: Any) -> str:
    params = inspect.signature(forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(decoder: Any) -> str:
    """The keyword `decoder.forward` takes its KV cache by: "cache" (transformers >= 5.24) or
    "past_key_values" (older)."""
    return _cache_kwarg_of(type(decoder).forward)


def returned_cache(output: Any) -> Any:
    """The KV cache in a decoder's output: the declared `cache` field where the output class has one
    (>= 5.24; read without touching the deprecated alias), else `past_key_values`."""
    names = {f.name for f in dataclasses.fields(output)} if dataclasses.is_dataclass(output) else set(output.keys())
    return getattr(output, "cache" if "cache" in names else "past_key_values", None)
