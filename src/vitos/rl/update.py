"""One branch update (or, for `joint`, both): rollouts + advantages -> GRPO loss -> optimiser step(s).

    rows    = branch_rows(step, rewards, "grounding", scale=True)      # one Row per rollout
    metrics = updater.update(step, rewards, ["grounding"])             # mu epochs over the rows

What an update does, in order (EasyR1 / TRL semantics):

    score view   each row is re-scored on exactly the input it was SAMPLED on: a grounding rollout on all
                 visual tokens, a sparse rollout on its parent's kept + fused tokens (Rollout.input_keeps)
    temperature  log-probs of softmax(logits / T) over the samplable vocabulary: the policy that sampled
    old logp     mu = 1: the update-time log-probs, detached (TRL: ratio 1 at the single update);
                 mu >= 2: computed once, before the first optimiser step, without gradients
    epochs       `grpo.epochs` = mu passes over the rows, one optimiser step per pass (micro-batched)
    weights      each micro-batch loss is weighted so that, after DDP/FSDP average the ranks' gradients,
                 the gradient is that of the aggregated loss over ALL rows of ALL ranks (`loss_weight`)
    TIS          `grpo.tis_cap`: each token's loss x min(pi_old / pi_sample, cap) (a separate rollout engine)
    alarm        `{branch}/logprob_diff_max` and `_mean`: |sampling-time - update-time| log-prob of every
                 sampled token before any step of this update (verl's rollout-vs-actor check)

The trainer (`vitos.rl.trainer`) only decides which branches to update when; everything numeric is here,
in `vitos.rl.grpo` (pure formulas) and `vitos.rl.rollout` (rewards, groups, weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vitos.rl.grpo import group_advantages, grpo_loss, truncated_is_weights
from vitos.rl.policy import ScoreRequest, pack
from vitos.rl.rollout import StepRewards, StepRollouts, agg_denominator, loss_weight, split_rows

MEAN_STATS = ("loss", "kl", "approx_kl", "clip_frac", "dual_clip_frac", "ratio_mean", "is_weight_mean")
"""Per-branch update statistics that are weighted means over micro-batches, ranks and epochs."""


@dataclass
class Row:
    """One rollout to re-score and push: what it was sampled on, its advantage and its recorded log-probs."""

    request: ScoreRequest
    """Prompt, the images' keep masks of the view it was sampled on, and the sampled ids (T,)."""
    advantage: float
    """Group-relative advantage (constant for the gradient)."""
    branch: str
    """'grounding' or 'sparse'."""
    sample_logprobs: torch.Tensor | None
    """(T,) log-probs recorded by the decoder at sampling time (None: not recorded)."""
    old_logprobs: torch.Tensor | None = None
    """(T,) old-policy log-probs for mu >= 2 (None: the update-time ones, detached)."""


def branch_rows(step: StepRollouts, rewards: StepRewards, branch: str, scale: bool = True) -> list[Row]:
    """Rows of one branch in rollout order, with GRPO advantages over that branch's groups."""
    rolls = step.grounding if branch == "grounding" else step.sparse
    r, groups = (rewards.grounding, rewards.grounding_groups) if branch == "grounding" else (rewards.sparse, rewards.sparse_groups)
    adv = group_advantages(r, groups, scale=scale)  # (N,)
    return [Row(ScoreRequest(step.prompts[o.question][branch], step.image_ids(o.question), o.input_keeps(), o.token_ids),
                float(a), branch, o.sample_logprobs) for o, a in zip(rolls, adv)]


def tis_weights(old: torch.Tensor, rows: list[Row], cap: float) -> torch.Tensor:
    """(n, T) truncated-IS weights of `rows` against their sampling-time log-probs (`grpo.tis_cap`); a row
    without recorded log-probs weighs 1 (it was sampled by the trainer's own forward)."""
    sample = old.detach().clone()  # (n, T): ratio 1 where nothing was recorded
    for i, r in enumerate(rows):
        if r.sample_logprobs is not None:
            t = min(r.sample_logprobs.numel(), sample.shape[1])
            sample[i, :t] = r.sample_logprobs[:t].to(device=sample.device, dtype=sample.dtype)
    return truncated_is_weights(old, sample, cap)


def pad_rows(values: list[torch.Tensor], width: int, device: torch.device) -> torch.Tensor:
    """[(T_i,)] -> (n, width) right-padded with 0 (padding is masked out downstream)."""
    out = torch.zeros(len(values), width, dtype=torch.float32, device=device)
    for i, v in enumerate(values):
        out[i, : v.numel()] = v.to(device=device, dtype=torch.float32)
    return out


def logprob_diff(logp: torch.Tensor, recorded: list[torch.Tensor | None], mask: torch.Tensor) -> tuple[float, float, int]:
    """|recorded - logp| over the real completion tokens: (max, sum, count). Rows without a record are skipped.

    logp: (n, T) update-time log-probs; recorded: n tensors (T_i,); mask: (n, T).
    """
    keep = [i for i, r in enumerate(recorded) if r is not None]
    if not keep:
        return 0.0, 0.0, 0
    ref = pad_rows([recorded[i] for i in keep], logp.shape[1], logp.device)  # (k, T)
    m = mask[keep].bool()  # (k, T)
    d = (ref - logp[keep].detach().float()).abs().masked_fill(~m, 0.0)  # (k, T)
    return float(d.max()) if m.any() else 0.0, float(d.sum()), int(m.sum())


class Updater:
    """Owns nothing but references: the (wrapped) policy, its optimiser and the run's settings."""

    def __init__(self, acc: Any, policy: torch.nn.Module, optimizer: Any, params: list[torch.nn.Parameter], cfg: Any,
                 vision_trainable: bool):
        self.acc, self.policy, self.optimizer, self.params, self.cfg = acc, policy, optimizer, params, cfg
        self.vision_trainable = vision_trainable
        if acc.gradient_accumulation_steps != cfg.optim.micro_batches:
            raise ValueError(f"the Accelerator accumulates {acc.gradient_accumulation_steps} micro-batches but "
                             f"optim.micro_batches is {cfg.optim.micro_batches}; they must agree")

    # --- global normalisers ------------------------------------------------------------------------
    def norms(self, rows: list[Row], branches: list[str], world: bool = True) -> dict[str, tuple[int, int]]:
        """Per branch (aggregation denominator, max completion length) over all rows of all processes."""
        local = []
        for b in branches:
            lens = [int(r.request.completion.numel()) for r in rows if r.branch == b]
            local += [agg_denominator(lens, self.cfg.grpo.agg), max(lens, default=0)]
        t = torch.tensor(local, dtype=torch.float64, device=self.acc.device)  # (2 * n_branches,)
        if world and self.acc.num_processes > 1:
            every = self.acc.gather(t[None])  # (P, 2 * n_branches)
            t = torch.stack([every[:, 0::2].sum(0), every[:, 1::2].amax(0)], dim=1).flatten()
        return {b: (int(t[2 * k]), max(1, int(t[2 * k + 1]))) for k, b in enumerate(branches)}

    # --- one micro-batch ---------------------------------------------------------------------------
    def _logprobs(self, step: StepRollouts, rows: list[Row], chunk: range) -> tuple[list[ScoreRequest], list, torch.Tensor, torch.Tensor]:
        reqs, used = pack([rows[k].request for k in chunk], sum(len(ims) for ims in step.images))
        feats = [step.flat_encoded[i] for i in used]
        imgs = [step.flat_images[i] for i in used] if self.vision_trainable else None
        logp, mask = self.policy("logprobs", reqs, feats, imgs, temperature=self.cfg.rollout.temperature)  # (n, T)
        return reqs, feats, logp, mask

    def losses(self, step: StepRollouts, rows: list[Row], chunk: range, branches: list[str],
               norms: dict[str, tuple[int, int]], world_size: int, record_diff: bool) -> tuple[torch.Tensor, dict, dict]:
        """Summed branch losses of one micro-batch, weighted (`loss_weight`); stats; log-prob diffs."""
        g = self.cfg.grpo
        reqs, feats, logp, mask = self._logprobs(step, rows, chunk)
        total, stats, diffs = logp.new_zeros(()), {}, {}
        for b in branches:
            idx = [n for n, k in enumerate(chunk) if rows[k].branch == b]
            if not idx:
                continue
            mine = [rows[chunk[n]] for n in idx]
            lp, mk = logp[idx], mask[idx]  # (n_b, T)
            if record_diff:
                diffs[b] = logprob_diff(lp, [r.sample_logprobs for r in mine], mk)
            old = lp.detach() if mine[0].old_logprobs is None else pad_rows([r.old_logprobs for r in mine], lp.shape[1], lp.device)
            ref = None
            if g.beta > 0:  # (n_b, T_b) with T_b <= T: pad to the chunk's width (padding is masked out)
                ref = self.policy("ref_logprobs", [reqs[n] for n in idx], feats, temperature=self.cfg.rollout.temperature)
                ref = torch.nn.functional.pad(ref, (0, lp.shape[1] - ref.shape[1]))
            adv = torch.tensor([r.advantage for r in mine], device=lp.device)  # (n_b,)
            denom, max_len = norms[b]
            isw = None if g.tis_cap is None else tis_weights(old, mine, g.tis_cap)  # (n_b, T)
            loss, st = grpo_loss(lp, old, adv, mk, ref, g.beta, g.clip_low, g.clip_high, g.dual_clip, g.agg,
                                 max_len=max_len, is_weights=isw)
            w = loss_weight([int(r.request.completion.numel()) for r in mine], denom, g.agg, world_size)
            total = total + w * loss
            stats[b] = {"loss": w * loss.item(), **{k: (w * v if k in MEAN_STATS else v) for k, v in st.items()}}
        return total, stats, diffs

    @torch.no_grad()
    def compute_old_logprobs(self, step: StepRollouts, rows: list[Row]) -> dict[str, tuple[float, float, int]]:
        """mu >= 2: fill every row's old_logprobs from the current policy (no grad); returns the diffs."""
        diffs: dict[str, tuple[float, float, int]] = {}
        for chunk in split_rows(len(rows), self.cfg.optim.micro_batches):
            _, _, logp, mask = self._logprobs(step, rows, chunk)
            for b in {rows[k].branch for k in chunk}:
                idx = [n for n, k in enumerate(chunk) if rows[k].branch == b]
                _merge_diff(diffs, b, logprob_diff(logp[idx], [rows[chunk[n]].sample_logprobs for n in idx], mask[idx]))
            for n, k in enumerate(chunk):
                rows[k].old_logprobs = logp[n, : rows[k].request.completion.numel()].float().cpu()
        return diffs

    # --- the update ----------------------------------------------------------------------------------
    def backward(self, step: StepRollouts, rows: list[Row], branches: list[str], norms: dict, record_diff: bool,
                 diffs: dict) -> dict[str, dict[str, float]]:
        """One pass over the rows in micro-batches, gradients accumulated (synchronised on the last one)."""
        per_branch: dict[str, dict[str, float]] = {}
        for chunk in split_rows(len(rows), self.cfg.optim.micro_batches):
            with self.acc.accumulate(self.policy):  # no gradient sync until the last micro-batch
                loss, stats, d = self.losses(step, rows, chunk, branches, norms, self.acc.num_processes, record_diff)
                self.acc.backward(loss * self.acc.gradient_accumulation_steps)  # accelerate divides by it
            for b, st in stats.items():
                acc_b = per_branch.setdefault(b, {})
                for k, v in st.items():
                    if k == "ratio_max":
                        acc_b[k] = max(acc_b.get(k, -float("inf")), v)
                    elif k == "ratio_min":
                        acc_b[k] = min(acc_b.get(k, float("inf")), v)
                    else:
                        acc_b[k] = acc_b.get(k, 0.0) + v
            for b, v in d.items():
                _merge_diff(diffs, b, v)
        return per_branch

    def step(self, branches: list[str]) -> dict[str, float | None]:
        """Clip and apply the accumulated gradient; returns the pre-clip norm per branch."""
        out: dict[str, float | None] = {}
        if self.cfg.optim.max_grad_norm > 0:  # joint: one norm for the summed loss, logged under both
            norm = self.acc.clip_grad_norm_(self.params, self.cfg.optim.max_grad_norm)  # None under DeepSpeed
            out = {f"{b}/grad_norm": None if norm is None else float(norm) for b in branches}
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out

    def update(self, step: StepRollouts, rewards: StepRewards, branches: list[str]) -> dict[str, Any]:
        """mu = grpo.epochs optimiser steps on one batch of rollouts; per-branch stats averaged over epochs."""
        mu = self.cfg.grpo.epochs
        rows = [row for b in branches for row in branch_rows(step, rewards, b, self.cfg.grpo.scale_advantages)]
        norms = self.norms(rows, branches)
        diffs: dict[str, tuple[float, float, int]] = {}
        if mu > 1:
            diffs = self.compute_old_logprobs(step, rows)
        out: dict[str, Any] = {}
        epochs: list[dict[str, dict[str, float]]] = []
        for epoch in range(mu):
            epochs.append(self.backward(step, rows, branches, norms, record_diff=(mu == 1 and epoch == 0), diffs=diffs))
            out.update(self.step(branches))
        for b in branches:
            per = [e[b] for e in epochs if b in e]
            for k in per[0] if per else []:
                vals = [p[k] for p in per]
                out[f"{b}/{k}"] = max(vals) if k == "ratio_max" else min(vals) if k == "ratio_min" else sum(vals) / len(vals)
            out[f"{b}/clip_frac_last_epoch"] = per[-1]["clip_frac"] if per else None
            if b in diffs:
                mx, total, n = diffs[b]
                out[f"{b}/logprob_diff_max"] = mx
                out[f"{b}/logprob_diff_mean"] = total / max(1, n)
        return out

    def grad_cosine(self, step: StepRollouts, rewards: StepRewards) -> float | None:
        """cos(grad L_grounding, grad L_sparse) over trainable parameters (local, un-synchronised gradients), both
        at the step's parameters. Costs one extra forward + backward per branch; memory: the two branches'
        gradients as per-parameter tensors in the gradient dtype (2 x the trainable parameters), never
        flattened or upcast as a whole (`grads_cosine` reduces them one parameter at a time)."""
        acc = self.acc
        if acc.distributed_type.name == "FSDP" or (acc.state.deepspeed_plugin and acc.state.deepspeed_plugin.zero_stage == 3):
            return None
        grads: list[list[torch.Tensor | None]] = []
        with acc.no_sync(self.policy):
            for b in ("grounding", "sparse"):
                rows = branch_rows(step, rewards, b, self.cfg.grpo.scale_advantages)
                norms = self.norms(rows, [b], world=False)
                g: list[torch.Tensor | None] = [None] * len(self.params)
                for chunk in split_rows(len(rows), self.cfg.optim.micro_batches):
                    loss, _, _ = self.losses(step, rows, chunk, [b], norms, 1, record_diff=False)
                    for k, d in enumerate(torch.autograd.grad(loss, self.params, allow_unused=True)):
                        if d is not None:
                            g[k] = d if g[k] is None else g[k].add_(d)
                grads.append(g)
        return grads_cosine(grads[0], grads[1])


COSINE_CHUNK = 1 << 24
"""Elements of one parameter's gradient reduced at once by `grads_cosine` (its fp32 temporaries: ~3 x 4 B each,
200 MB, however large the embedding table)."""


def grads_cosine(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> float | None:
    """cos(a, b) of two gradients given per parameter (None = zero), = cos(cat(a), cat(b)) without building
    either vector: dot products and squared norms are summed in fp64, COSINE_CHUNK elements of a parameter
    (upcast to fp32) at a time. None when either gradient is zero."""
    dot, na, nb = 0.0, 0.0, 0.0
    for x, y in zip(a, b):
        xs = x.reshape(-1).split(COSINE_CHUNK) if x is not None else None
        ys = y.reshape(-1).split(COSINE_CHUNK) if y is not None else None
        for k in range(len(xs if xs is not None else ys or ())):
            xf = xs[k].float() if xs is not None else None  # (n,) fp32
            yf = ys[k].float() if ys is not None else None
            if xf is not None:
                na += float(xf.dot(xf))
            if yf is not None:
                nb += float(yf.dot(yf))
            if xf is not None and yf is not None:
                dot += float(xf.dot(yf))
    norm = (na * nb) ** 0.5
    return dot / norm if norm > 0 else None


def _merge_diff(diffs: dict[str, tuple[float, float, int]], branch: str, d: tuple[float, float, int]) -> None:
    mx, total, n = diffs.get(branch, (0.0, 0.0, 0))
    diffs[branch] = (max(mx, d[0]), total + d[1], n + d[2])
