"""Gradient of one ViToS update on fixed rollouts, in 1 process or data-parallel (DDP, gloo on CPU).

    python tests/distributed/grad_check.py MODEL_DIR OUT.pt                            # 1 process, all rows
    torchrun --nproc_per_node 2 tests/distributed/grad_check.py MODEL_DIR OUT.pt       # each rank its questions

Every rank samples the SAME rollouts for all questions (same seed, CPU is deterministic), keeps its own
questions' trees (`StepRollouts.subset`), and runs `Updater.backward` (joint: both branches, two
micro-batches) through the DDP-wrapped policy. Rank 0 saves the synchronised gradient. The test
(tests/test_distributed.py) asserts that the 2-process gradient equals the 1-process one: completions
have different lengths on the two ranks, so a per-rank token normalisation would make them differ.
`--local-norms` plants exactly that bug (for the liveness check).
"""

from __future__ import annotations

import sys

import torch


def _planted_updater():
    from vitos.rl.update import Updater

    class PerRankNormalised(Updater):
        """The pre-fix trainer: each rank's loss normalised over its own rows, then DDP's average."""

        def losses(self, step, rows, chunk, branches, norms, world_size, record_diff):
            return super().losses(step, rows, chunk, branches, norms, 1, record_diff)

    return PerRankNormalised


def main(model_dir: str, out: str, local_norms: bool = False) -> None:
    from accelerate import Accelerator

    from vitos.config import load_config
    from vitos.data.sample import Sample
    from vitos.models import load_model
    from vitos.rl import rollout as ro
    from vitos.rl.config import TrainConfig
    from vitos.rl.policy import build_policy
    from vitos.rl.update import Updater, branch_rows

    torch.set_num_threads(1)
    cfg = load_config(TrainConfig, None, [
        "rollout.group_size=2", "rollout.sparse_group_size=2", "rollout.max_new_tokens=12", "rollout.temperature=1.0",
        "optim.micro_batches=2", "schedule.name=joint", "model.lora=true", "model.lora_r=4", "device=cpu"])
    acc = Accelerator(cpu=True, gradient_accumulation_steps=cfg.optim.micro_batches)
    adapter = load_model(model_dir, "float32", device="cpu")
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    samples = [Sample(id=f"q{k}", images=[Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))],
                      question=f"Is there a lesion in region {k}?", answer="yes", kind="yes_no")
               for k, (w, h) in enumerate([(112, 84), (168, 140)])]
    with torch.no_grad():  # the same rollouts on every rank
        full = ro.collect(adapter, samples, cfg.rollout, cfg.prune, torch.Generator().manual_seed(0))
    for k, o in enumerate(full.grounding + full.sparse):  # a random model never stops: make lengths differ
        o.token_ids = o.token_ids[: 2 + (7 * k) % 11]
    lengths = [int(o.token_ids.numel()) for o in full.grounding + full.sparse]
    per_rank = len(samples) // acc.num_processes
    mine = full.subset(list(range(acc.process_index * per_rank, (acc.process_index + 1) * per_rank)))
    rewards = ro.score(mine, override=lambda text, s, b: sum(c.islower() for c in text) / max(1, len(text)))

    torch.manual_seed(0)  # LoRA A init: the same on every rank and in every run
    policy = build_policy(adapter, cfg.prune, lora=True, lora_r=4, lora_alpha=8)
    params = [p for p in policy.parameters() if p.requires_grad]
    with torch.no_grad():  # LoRA B starts at 0, which would make the A gradients vanish: give B values
        g = torch.Generator().manual_seed(1)
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    optimizer = torch.optim.SGD(params, lr=0.0)
    policy, optimizer = acc.prepare(policy, optimizer)
    up = (_planted_updater() if local_norms else Updater)(acc, policy, optimizer, params, cfg, vision_trainable=False)
    branches = ["grounding", "sparse"]
    rows = [r for b in branches for r in branch_rows(mine, rewards, b)]
    norms = up.norms(rows, branches, world=not local_norms)  # planted bug: each rank normalises by its own rows
    up.backward(mine, rows, branches, norms, record_diff=False, diffs={})
    if acc.is_main_process:
        names = [n for n, p in acc.unwrap_model(policy).named_parameters() if p.requires_grad]
        torch.save({"grads": {n: p.grad.detach().clone() for n, p in zip(names, params)}, "lengths": lengths, "ids": [o.token_ids for o in full.grounding + full.sparse], "adv": [r.advantage for r in rows],
                    "num_processes": acc.num_processes}, out)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], local_norms="--local-norms" in sys.argv)
