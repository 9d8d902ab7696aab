"""Make a CUDA-built torchvision importable against CPU torch (the vLLM CPU venv of `.ci/vllm` only).

The registry's torchvision wheel is a CUDA build; against torch 2.13.0+cpu its C++ ops do not load and
`import torchvision` dies in `_meta_registrations.py` registering fake kernels for `torchvision::nms` and
`torchvision::qnms` ("operator torchvision::nms does not exist"). vLLM's Qwen2.5-VL path only needs
torchvision's Python transforms, so this rewrites those two registrations to be skipped when the op is
missing. Idempotent; touches only the given venv's site-packages.

    python .ci/torchvision_cpu_fix.py     # run with the venv's python
"""

import importlib.util
import pathlib
import sys

spec = importlib.util.find_spec("torchvision")
if spec is None or spec.origin is None:
    sys.exit("torchvision is not installed in this interpreter's environment")
path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
src = path.read_text()
GUARD = "def _fake_if_loaded(name):"
if GUARD not in src:
    helper = (
        "\n\n" + GUARD + "\n"
        "    # vitos .ci/torchvision_cpu_fix.py: skip fake kernels of ops that did not load (CUDA wheel, CPU torch)\n"
        "    def wrap(fn):\n"
        "        try:\n"
        "            return torch.library.register_fake(name)(fn)\n"
        "        except RuntimeError:\n"
        "            return fn\n"
        "    return wrap\n"
    )
    head, sep, rest = src.partition("\nimport torch\n")
    if not sep:
        sys.exit(f"{path}: no 'import torch' line; torchvision changed, update this fix")
    src = head + sep + helper + rest
    for op in ("nms", "qnms"):
        src = src.replace(f'@torch.library.register_fake("torchvision::{op}")', f'@_fake_if_loaded("torchvision::{op}")')
    path.write_text(src)
print(f"ci: torchvision fake-op registrations guarded in {path}")
