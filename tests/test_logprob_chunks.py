"""Log-probs in chunks (`vitos.engine.chunked_token_logprobs`): the same numbers and gradients as the full
(B, T, V) log-softmax, at a fraction of its peak memory at Qwen2.5's real vocabulary (151,936).

The reference (`_full_logprobs`) is the pre-chunking `completion_logprobs`, verbatim: `lm_forward` with
`logits_to_keep = T + 1`, fp32 logits, suppressed columns -inf, `token_logprobs`, gather. Values and gradients
run on the position-sensitive tiny Qwen2.5-VL and HuatuoGPT-Vision (LM head x 20: log-probs spread over
several nats, so a temperature or target-shift slip moves them by far more than the 1e-5 tolerance).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from peak_rss import PEAK_RSS_HELPERS
import torch

from conftest import random_image
from vitos.engine import LOGPROB_CHUNK, chunked_token_logprobs, completion_logprobs, token_logprobs
from vitos.pruning.sparse import assemble, collate, next_positions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = ["sensitive_adapter", "sensitive_huatuo"]
LENGTHS = [7, 3, 11]
"""Completion lengths of the three rows (unequal: the right padding must not leak into the numbers)."""


def _full_logprobs(ad, seqs, completions, temperature: float = 1.0, suppress: bool = False):
    """The pre-chunking `completion_logprobs`: full (B, T, V) fp32 logits and log-softmax."""
    embeds, positions, mask = collate(seqs)  # (B, Lp, D), (P, B, Lp), (B, Lp)
    b = embeds.shape[0]
    t_max = max(1, max(int(c.numel()) for c in completions))
    comp = torch.full((b, t_max), ad.pad_token_id, dtype=torch.long)
    comp_mask = torch.zeros(b, t_max, dtype=torch.long)
    for i, c in enumerate(completions):
        comp[i, : c.numel()] = c
        comp_mask[i, : c.numel()] = 1
    nxt = next_positions(positions, mask)  # (B,)
    comp_pos = (nxt[:, None] + torch.arange(t_max)[None])[None].expand(positions.shape[0], b, t_max)  # (P, B, T)
    full_embeds = torch.cat([embeds, ad.embed_tokens(comp)], dim=1)
    full_pos = torch.cat([positions, comp_pos], dim=2)
    full_mask = torch.cat([mask, comp_mask], dim=1)
    logits, _ = ad.lm_forward(full_embeds, full_pos, full_mask, logits_to_keep=t_max + 1)  # (B, T + 1, V)
    logits = logits[:, :-1].float()  # (B, T, V)
    if suppress and ad.suppressed_token_ids:
        logits = logits.index_fill(-1, torch.tensor(ad.suppressed_token_ids), float("-inf"))
    logp = token_logprobs(logits, temperature).gather(-1, comp[..., None]).squeeze(-1)  # (B, T)
    return logp * comp_mask, comp_mask


def _rows(ad, seed: int = 0):
    """Three assembled sequences (pruned image, whole image, second question) and completions of LENGTHS,
    drawn from the ids `generate` may sample (a suppressed target would be -inf in both paths)."""
    with torch.no_grad():
        enc = ad.encode_images([random_image(224, 224, 11), random_image(168, 168, 12)])
    h, w = enc[0].grid_hw
    keep = torch.zeros(h, w, dtype=torch.bool)
    keep[1 : h // 2, w // 3 :] = True
    with torch.no_grad():
        seqs = [
            assemble(ad, ad.build_prompt("a?", [enc[0]]), [enc[0]], [keep], fusion="merge"),
            assemble(ad, ad.build_prompt("longer question here?", [enc[1]]), [enc[1]]),
            assemble(ad, ad.build_prompt("where is it?", [enc[0]]), [enc[0]]),
        ]
    allowed = torch.tensor(sorted(set(range(len(ad.tokenizer))) - set(ad.suppressed_token_ids)))
    gen = torch.Generator().manual_seed(seed)
    comps = [allowed[torch.randint(0, allowed.numel(), (n,), generator=gen)] for n in LENGTHS]
    return seqs, comps


@pytest.mark.parametrize("model", MODELS)
def test_chunked_logprobs_equal_the_full_log_softmax(model, request):
    ad = request.getfixturevalue(model)
    seqs, comps = _rows(ad)
    assert ad.suppressed_token_ids
    with torch.no_grad():
        for temperature in (1.0, 0.7, 1.6):
            for suppress in (False, True):
                ref, ref_mask = _full_logprobs(ad, seqs, comps, temperature, suppress)
                assert ref.abs().max() > 1.0  # spread log-probs: a wrong temperature or shift shows
                for chunk in (1, 4, sum(LENGTHS) - 1, 1000):  # 1 position, ragged, one short of all, > B x T
                    lp, mask = completion_logprobs(ad, seqs, comps, temperature, suppress, chunk_size=chunk)
                    assert torch.equal(mask, ref_mask)
                    assert lp.dtype == torch.float32 and lp.shape == ref.shape == (3, max(LENGTHS))
                    assert (lp[mask == 0] == 0).all()
                    err = (lp - ref).abs().max().item()
                    assert err <= 1e-5, f"T={temperature} suppress={suppress} chunk={chunk}: max |diff| {err}"


@pytest.mark.parametrize("model", MODELS)
def test_chunked_logprobs_give_the_full_gradients(model, request):
    """d(sum_k w_k logp_k)/d(every parameter): chunked with recomputation == full, for chunk 1, ragged, > N
    (to 1e-5 of each gradient tensor's largest entry, floor 1; the log-probs themselves to 1e-5)."""
    ad = request.getfixturevalue(model)
    seqs, comps = _rows(ad, seed=1)
    weights = torch.randn(3, max(LENGTHS), generator=torch.Generator().manual_seed(2))
    params = {n: p for n, p in ad.model.named_parameters() if p.requires_grad}
    assert "lm_head.weight" in params

    def grads(fn):
        ad.model.zero_grad(set_to_none=True)
        lp, _ = fn()
        (lp * weights).sum().backward()
        out = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
        ad.model.zero_grad(set_to_none=True)  # the fixture is shared: leave no gradients behind
        return lp.detach(), out

    ref_lp, ref = grads(lambda: _full_logprobs(ad, seqs, comps, 0.7, True))
    assert ref["lm_head.weight"].abs().sum() > 0 and len(ref) > 10  # head and decoder layers get gradients
    for chunk in (1, 5, 1000):
        lp, got = grads(lambda: completion_logprobs(ad, seqs, comps, 0.7, True, chunk_size=chunk))
        assert (lp - ref_lp).abs().max() <= 1e-5
        assert got.keys() == ref.keys()
        for name, g in ref.items():
            # 1e-5 of the tensor's scale (floor 1): the sensitive models' embedding gradients reach ~100,
            # where one fp32 ulp is ~8e-6 and a different summation order moves them by ~5e-5.
            err = (got[name] - g).abs().max().item() / max(1.0, g.abs().max().item())
            assert err <= 1e-5, f"chunk={chunk}: {name} gradient differs by {err} of its scale"


def test_chunked_token_logprobs_direct_head_weight_and_errors():
    """The pure function on a (V, D) weight and on leading shapes, against the full log-softmax; bad input."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(50, 8, generator=gen) * 3  # (V, D)
    h = torch.randn(2, 5, 8, generator=gen)  # (B, T, D)
    tgt = torch.randint(0, 45, (2, 5), generator=gen)  # (B, T); ids 45.. suppressed below
    suppressed = list(range(45, 50))
    logits = (h @ w.T).index_fill(-1, torch.tensor(suppressed), float("-inf"))
    ref = token_logprobs(logits, 0.5).gather(-1, tgt[..., None]).squeeze(-1)
    for chunk in (1, 3, 10, 64):
        got = chunked_token_logprobs(h, w, tgt, 0.5, suppressed, chunk)
        assert got.shape == (2, 5) and (got - ref).abs().max() <= 1e-5
    assert chunked_token_logprobs(h[:0], w, tgt[:0]).shape == (0, 5)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        chunked_token_logprobs(h, w, tgt, chunk=0)
    with pytest.raises(ValueError, match="targets must have hidden's shape"):
        chunked_token_logprobs(h, w, tgt[:, :4])
    assert LOGPROB_CHUNK >= 1


# ------------------------------------------------------------------------------ peak memory at V = 151,936
_PEAK_SCRIPT = textwrap.dedent(r"""
    import json, os, re, sys
    import torch
    torch.set_num_threads(1)
    from vitos.engine import LOGPROB_CHUNK, chunked_token_logprobs, token_logprobs

    #PEAK_RSS_HELPERS

    V, D = 151936, 64
    torch.manual_seed(0)
    head = torch.nn.Linear(D, V, bias=False)  # (V, D) head at Qwen2.5's vocabulary
    suppressed = list(range(V - 8, V))

    def full(h, tgt):  # the pre-chunking computation on (B, T, D) states, T = 0.7, suppressed ids -inf
        logits = head(h).float().index_fill(-1, torch.tensor(suppressed), float("-inf"))  # (B, T, V)
        return token_logprobs(logits, 0.7).gather(-1, tgt[..., None]).squeeze(-1)  # (B, T)

    def lean_full(h, tgt):  # the least a full pass can hold: logits + their log-softmax (T = 1, no suppression)
        return torch.log_softmax(head(h), -1).gather(-1, tgt[..., None]).squeeze(-1)  # (B, T)

    def chunked(chunk, recompute=None):
        return lambda h, tgt: chunked_token_logprobs(h, head, tgt, 0.7, suppressed, chunk, recompute)

    def measure(name, rows, tokens, grad, fn):
        h = torch.randn(rows, tokens, D, requires_grad=grad)  # (B, T, D)
        tgt = torch.randint(0, V - 8, (rows, tokens))  # (B, T)
        base = reset()
        with torch.set_grad_enabled(grad):
            lp = fn(h, tgt)
            if grad:
                lp.sum().backward()
        used = peak() - base
        head.weight.grad = None
        return {"case": name, "rows": rows, "tokens": tokens, "grad": grad, "peak_bytes": used}

    out = [
        measure("full", 4, 512, False, lean_full),
        measure("chunked", 4, 512, False, chunked(LOGPROB_CHUNK)),  # the default chunk
        measure("full", 4, 256, True, full),
        measure("chunked", 4, 256, True, chunked(64)),
        measure("chunked, no recompute", 4, 256, True, chunked(64, recompute=False)),
    ]
    print(json.dumps(out))
""").replace("#PEAK_RSS_HELPERS", PEAK_RSS_HELPERS)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS via /proc (Linux)")
def test_chunked_logprobs_peak_memory_is_a_quarter_of_the_full_pass_at_the_real_vocabulary():
    """Peak RSS over the log-prob computation at V = 151,936 (D = 64 head: the logits dominate), in a fresh
    process: /proc/self/clear_refs resets the peak (VmHWM) before each case, and glibc mmaps every
    allocation >= 64 KiB (MALLOC_MMAP_THRESHOLD_), so a freed tensor leaves the RSS at once and the peak is
    the live tensors', not the allocator's cache.

    4 x 512 tokens without grad (reference / old log-probs), default chunk, against the leanest full pass
    (logits + log-softmax: 2 copies; the pre-chunking code holds 3); 4 x 256 tokens forward + backward (the
    update; a full 4 x 512 backward would need ~4 GB here), chunk 64, against the pre-chunking computation.
    The chunked path without recomputation keeps every chunk's logits for the backward: the checkpoint is
    what saves the memory there."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    cases = json.loads(run.stdout.strip().splitlines()[-1])
    peak = {(c["case"], c["grad"]): c["peak_bytes"] for c in cases}
    for c in cases:
        print(f"{c['case']:>22} {c['rows']} x {c['tokens']} grad={c['grad']}: {c['peak_bytes'] / 2**20:8.1f} MiB")
    assert peak[("full", False)] >= 4 * 512 * 151936 * 4  # the measurement sees the (B, T, V) fp32 logits
    assert peak[("chunked", False)] <= 0.25 * peak[("full", False)]
    assert peak[("chunked", True)] <= 0.25 * peak[("full", True)]
    assert peak[("chunked, no recompute", True)] >= 1.5 * peak[("chunked", True)]
