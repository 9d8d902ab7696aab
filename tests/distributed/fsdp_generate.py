"""Sharded weights (FSDP2 `fully_shard`, gloo on CPU): ranks whose completions stop at different lengths
still make the same forward calls, generate, score and take one optimiser step without hanging.

    torchrun --nproc_per_node 2 tests/distributed/fsdp_generate.py MODEL_DIR [--no-sync]

accelerate does not enable FSDP on CPU (its FSDP path is for accelerators), so this script shards with
torch's own `fully_shard` exactly as accelerate's FSDP2 plugin does (each decoder and vision block, then
the root) and drives vitos' decode loop through `PolicyView`, the door the trainer uses. Rank 0 stops
after its first token (every id is an EOS for it), rank 1 decodes all MAX_NEW tokens: with
`generation_sync` rank 0 keeps stepping until rank 1 is done; `--no-sync` (the planted bug) deadlocks
in the next all-gather, which the test sees as a timeout.
"""

from __future__ import annotations

import datetime
import sys

import torch

MAX_NEW = 8


def main(model_dir: str, sync: bool) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from vitos.engine import SamplingConfig, generate
    from vitos.models import load_model
    from vitos.pipeline import PruneConfig, encode
    from vitos.pruning.sparse import assemble
    from vitos.rl.policy import PolicyView, ScoreRequest, build_policy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=20))
    rank = dist.get_rank()
    torch.manual_seed(0)
    adapter = load_model(model_dir, "float32", device="cpu")
    policy = build_policy(adapter, PruneConfig(), lora=False, freeze_vision=True)
    for module in policy.modules():  # accelerate's TRANSFORMER_BASED_WRAP for Qwen2.5-VL, then the root
        if type(module).__name__ in ("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"):
            fully_shard(module)
    fully_shard(policy)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-3)

    def all_done(local_done: bool) -> bool:
        running = torch.tensor([0.0 if local_done else 1.0])
        dist.all_reduce(running)
        return float(running) == 0.0

    view = PolicyView(policy, adapter, all_done if sync else None)
    view.eos_token_ids = list(range(len(adapter.tokenizer))) if rank == 0 else []  # rank 0 stops at once
    from PIL import Image

    image = Image.new("RGB", (112, 84), color=(40 * rank, 90, 160))
    with torch.no_grad():
        enc = encode(view, [[image]])[0]
        prompt = adapter.build_prompt("Is there a lesion?", enc)
        seq = assemble(view, prompt, enc, None)
        gen = generate(view, [seq, seq], SamplingConfig(max_new_tokens=MAX_NEW, temperature=1.0),
                       torch.Generator().manual_seed(rank))
    lengths = [int(t.numel()) for t in gen.token_ids]
    assert lengths == ([1, 1] if rank == 0 else [MAX_NEW, MAX_NEW]), lengths

    reqs = [ScoreRequest(prompt, [0], [None], t) for t in gen.token_ids]
    logp, mask = policy("logprobs", reqs, enc, None, temperature=1.0)  # (2, T) with gradients
    (-(logp * mask).sum() / mask.sum()).backward()
    optimizer.step()
    dist.barrier()
    print(f"rank {rank}: completion lengths {lengths}, one sharded optimiser step done", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sync="--no-sync" not in sys.argv)
