"""vLLM as an optional engine for pruned grids (`pip install -e ".[vllm]"`).

    requests.py   vitos prompt + keep masks -> one vLLM request (placeholders, embeddings, positions): pure
    plugin.py     the out-of-tree model vLLM loads (entry point `vllm.general_plugins`): Qwen2.5-VL that
                  takes precomputed (pruned) visual rows and their ORIGINAL M-RoPE positions per request
    engine.py     `VllmEngine`: generate / log-probs / weight sync, returning vitos' own `Generation`

`requests` imports no vLLM; the other two need the extra. The Python decode loop (`vitos.engine`) stays the
default and the reference every vLLM result is tested against (tests_vllm/, `bash .ci/vllm`).
"""

ARCHITECTURE = "VitosQwen2_5_VLForConditionalGeneration"
"""The architecture name the engine asks vLLM for (hf_overrides)."""


def register() -> None:
    """Make ARCHITECTURE known to vLLM, lazily (the class loads when vLLM builds the model). vLLM calls this in
    every process through the `vllm.general_plugins` entry point; VllmEngine calls it too. Idempotent."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "vitos.vllm_engine.plugin:VitosQwen2_5_VLForConditionalGeneration")
