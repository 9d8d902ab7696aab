"""vLLM as an optional engine for pruned grids (`pip install -e ".[vllm]"`).

    requests.py   vitos prompt + keep masks -> one vLLM request (placeholders, embeddings, positions): pure
    plugin.py     the out-of-tree model vLLM loads (entry point `vllm.general_plugins`): Qwen2.5-VL that
                  takes precomputed (pruned) visual rows and their ORIGINAL M-RoPE positions per request
    engine.py     `VllmEngine`: generate / log-probs / weight sync, returning vitos' own `Generation`

`requests` imports no vLLM; the other two need the extra. The Python decode loop (`vitos.engine`) stays the
default and the reference every vLLM result is tested against (tests_vllm/, `bash .ci/vllm`).
"""
