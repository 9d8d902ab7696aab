"""vitos.models.compat: the KV-cache keyword and output field on both spellings transformers has used."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vitos.models.compat import cache_kwarg, returned_cache


def test_cache_kwarg_follows_the_decoders_signature():
    class New:
        def forward(self, inputs_embeds=None, cache=None, use_cache=None): ...

    class Old:
        def forward(self, inputs_embeds=None, past_key_values=None, use_cache=None): ...

    assert cache_kwarg(New()) == "cache" and cache_kwarg(Old()) == "past_key_values"


def test_returned_cache_reads_the_declared_field_of_either_spelling():
    @dataclass
    class NewOut:
        last_hidden_state: Any = None
        cache: Any = None

        @property
        def past_key_values(self):  # the deprecated alias: must not be what is read
            raise AssertionError("read the deprecated alias")

    @dataclass
    class OldOut:
        last_hidden_state: Any = None
        past_key_values: Any = None

    assert returned_cache(NewOut(cache="kv")) == "kv" and returned_cache(OldOut(past_key_values="kv")) == "kv"
    assert returned_cache(OldOut()) is None


def test_the_installed_decoder_round_trips_its_cache(tiny_adapter):
    """The real decoder of the installed transformers: a cache passed in under cache_kwarg comes back out."""
    import torch

    dec = tiny_adapter.model.model.language_model
    emb = tiny_adapter.embed_tokens(torch.tensor([[1, 2, 3]]))
    pos = torch.arange(3)[None, None].expand(tiny_adapter.num_position_rows, 1, 3)
    _, cache = tiny_adapter.lm_hidden(emb, pos, torch.ones(1, 3, dtype=torch.long), cache=_dynamic(tiny_adapter))
    assert cache is not None and cache.get_seq_length() == 3 and cache_kwarg(dec) in ("cache", "past_key_values")


def _dynamic(adapter):
    from transformers import DynamicCache

    return DynamicCache(config=adapter.model.config.get_text_config())
