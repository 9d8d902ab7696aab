"""Dual-stream rollouts and the reward -> advantage plumbing, as plain dataclasses and functions.

For a batch of B questions (REFERENCE §1):

    encode      every image once (vision tower, no grad); both branches reuse the features
    grounding   G rollouts O_i per question on ALL visual tokens             -> B*G rows, order (q, i)
    prune       parse O_i's boxes -> keep masks (no usable box: keep the image whole, reason recorded)
    sparse      G' rollouts O'_ij per O_i on its kept + fused tokens        -> B*G*G' rows, order (q, i, j)
    score       r_ij (grounding) and r'_ij (sparse) from vitos.rl.rewards, with cross-feedback
    advantages  grounding: over the G rollouts of a question; sparse: over all G*G' of the question
                ("question") or the G' children of each O_i ("parent")

Each branch is sampled with ONE batched `vitos.engine.generate` call (or chunks of
`rollout.generation_batch_size` rows), on sequences assembled by `vitos.pruning.sparse.assemble`, the
same code inference uses; prompts are built once per question and branch.

The grounding rollout O_i has G' pair rewards r_ij (one per sparse child). Its scalar GRPO reward is their
mean over j, i.e. format + IoU + acc(O_i) + (mean sparse accuracy of its children), weighted: the expected
cross-feedback of the tokens O_i kept. Rows without ground-truth boxes skip IoU (vitos.rl.rewards).

    step = collect(adapter, samples, rollout_cfg, prune_cfg, generator)
    rewards = score(step, RewardWeights())
    adv_g = group_advantages(rewards.grounding, rewards.grounding_groups)   # (B*G,)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from vitos.data.sample import Sample
from vitos.engine import SamplingConfig, generate
from vitos.models.base import EncodedImage, ModelAdapter, Prompt
from vitos.pipeline import PruneConfig, encode, keep_masks, load_sample_images
from vitos.prompts import grounding_prompt, parse_output, sparse_prompt
from vitos.pruning.sparse import SequenceInputs, assemble
from vitos.rl.config import RolloutSection
from vitos.rl.rewards import RewardWeights, accuracy_reward, grounding_rewards, kept_ratio, sparse_rewards

RewardOverride = Callable[[str, Sample, str], float]
"""Diagnostic hook `fn(text, sample, branch) -> reward` that replaces every rollout's total reward
(the real components are still computed and logged). For tests and sanity checks, never for training."""


@dataclass
class Rollout:
    """One sampled completion, with what is needed to score it again with gradients."""

    branch: str
    """'grounding' or 'sparse'."""
    question: int
    """Index of the question in the step's batch."""
    parent: int
    """i: the grounding rollout this row is (grounding) or was launched from (sparse)."""
    child: int
    """j for a sparse rollout, -1 for a grounding one."""
    text: str
    """Decoded completion (special tokens removed)."""
    token_ids: torch.Tensor
    """(T,) sampled ids, ending with EOS when the policy stopped by itself."""
    keeps: list[torch.Tensor | None]
    """Per image of the question: (H, W) keep mask of the SPARSE view this row belongs to, None = all
    tokens. Grounding: the masks its own boxes imply for its children (it was sampled on all tokens, see
    `input_keeps`); sparse: its parent's masks, the view it was sampled on."""
    n_visual_total: int
    """Visual tokens of the unpruned prompt."""
    n_visual_kept: int
    """Visual tokens this row's prompt fed the LM (kept + fused)."""
    stopped: bool
    """EOS before max_new_tokens."""
    fallback: str | None = None
    """Grounding only: why its sparse children saw all tokens of some image (no usable box), else None."""
    sample_logprobs: torch.Tensor | None = None
    """(T,) fp32 log-prob of each sampled token under the sampling distribution, recorded by the decoder;
    the trainer compares it with the update-time log-probs (`*/logprob_diff_*`)."""

    def input_keeps(self) -> list[torch.Tensor | None]:
        """Keep masks of the input this rollout was SAMPLED on, i.e. the view it must be scored on:
        all tokens for a grounding rollout, the parent's kept + fused tokens for a sparse one."""
        return [None] * len(self.keeps) if self.branch == "grounding" else self.keeps


@dataclass
class StepRollouts:
    """All rollouts of one training step, plus the shared per-question inputs."""

    samples: list[Sample]
    """The B questions."""
    images: list[list[Any]]
    """Per question: its PIL images."""
    encoded: list[list[EncodedImage]]
    """Per question: its encoded images (no grad), computed once and shared by both branches."""
    prompts: list[dict[str, Prompt]]
    """Per question: {'grounding': Prompt, 'sparse': Prompt}."""
    group_size: int
    """G."""
    sparse_group_size: int
    """G'."""
    grounding: list[Rollout] = field(default_factory=list)
    """B*G rows in (q, i) order."""
    sparse: list[Rollout] = field(default_factory=list)
    """B*G*G' rows in (q, i, j) order."""

    def image_ids(self, question: int) -> list[int]:
        """Indices of the question's images in the flat list of the step's images."""
        start = sum(len(ims) for ims in self.images[:question])
        return list(range(start, start + len(self.images[question])))

    def subset(self, questions: list[int]) -> "StepRollouts":
        """The rollout trees of some questions only (renumbered 0..k-1), e.g. one data-parallel rank's share."""
        g, g2 = self.group_size, self.sparse_group_size
        out = StepRollouts([self.samples[q] for q in questions], [self.images[q] for q in questions],
                           [self.encoded[q] for q in questions], [self.prompts[q] for q in questions], g, g2)
        for new, q in enumerate(questions):
            out.grounding += [dataclasses.replace(o, question=new) for o in self.grounding[q * g : (q + 1) * g]]
            out.sparse += [dataclasses.replace(o, question=new) for o in self.sparse[q * g * g2 : (q + 1) * g * g2]]
        return out

    @property
    def flat_encoded(self) -> list[EncodedImage]:
        return [e for enc in self.encoded for e in enc]

    @property
    def flat_images(self) -> list[Any]:
        return [im for ims in self.images for im in ims]


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def build_prompts(adapter: ModelAdapter, samples: list[Sample], encoded: list[list[EncodedImage]]) -> list[dict[str, Prompt]]:
    """Both branches' prompts per question, worded exactly as `vitos.pipeline` does at inference."""
    out = []
    for s, enc in zip(samples, encoded):
        n = max(1, len(enc))
        out.append({
            "grounding": adapter.build_prompt(grounding_prompt(s.question, s.options, s.kind, n), enc),
            "sparse": adapter.build_prompt(sparse_prompt(s.question, s.options, s.kind, n), enc),
        })
    return out


def _sample(adapter: ModelAdapter, seqs: list[SequenceInputs], n: int, cfg: RolloutSection,
            generator: torch.Generator | None):
    """n completions per distinct sequence (each prefilled once, `generate(samples_per_seq=n)`), in calls of
    about cfg.generation_batch_size generated rows (0 = one call; at least one prompt's n per call).
    Returns per generated row, in (sequence, sample) order: token ids (T,), text, stopped, sampling-time
    log-probs (T,)."""
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    per_call = max(1, (cfg.generation_batch_size or len(seqs) * n) // n)  # prompts per generate call
    ids, texts, stopped, logprobs = [], [], [], []
    for k in range(0, len(seqs), per_call):
        # PolicyView: ranks step together when sharded
        gen = generate(adapter, seqs[k : k + per_call], sampling, generator, samples_per_seq=n)
        ids += gen.token_ids
        texts += gen.texts
        stopped += gen.stopped
        logprobs += gen.logprobs if gen.logprobs is not None else [torch.full((len(t),), float("nan")) for t in gen.token_ids]
    return ids, texts, stopped, logprobs


def _sample_vllm(engine: Any, adapter: ModelAdapter, prompts: list[Prompt], encoded: list[list[EncodedImage]],
                 keeps: list[list[torch.Tensor | None] | None], n: int, cfg: RolloutSection, prune: PruneConfig,
                 generator: torch.Generator | None):
    """`_sample` on the vLLM engine (rollout.engine=vllm): the same rows at the same positions
    (vitos.vllm_engine.requests), n samples per request, seeded from the trainer's generator. Same returns;
    the log-probs are the engine's, at the sampling temperature (their difference from the trainer's is
    `{branch}/logprob_diff_*`)."""
    from vitos.vllm_engine.requests import build_request

    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    reqs = [build_request(adapter, p, enc, k, prune.fusion, prune.num_contextual) for p, enc, k in zip(prompts, encoded, keeps)]
    seed = None if generator is None else int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
    gen = engine.generate_for(adapter, reqs, sampling, n=n, seed=seed)
    return gen.token_ids, gen.texts, gen.stopped, gen.logprobs


@torch.no_grad()
def sample_grounding(step: StepRollouts, adapter: ModelAdapter, cfg: RolloutSection, prune: PruneConfig,
                     generator: torch.Generator | None, engine: Any = None) -> list[Rollout]:
    """G rollouts per question on all visual tokens (one prefill per question); each gets the keep masks its
    boxes imply. `engine`: None (the Python decode loop) or a VllmEngine."""
    g = step.group_size
    prompts = [assemble(adapter, p["grounding"], enc, None, fusion=prune.fusion, num_contextual=prune.num_contextual)
               for p, enc in zip(step.prompts, step.encoded)]
    seqs = [seq for seq in prompts for _ in range(g)]
    owners = [(q, i) for q in range(len(prompts)) for i in range(g)]
    if engine is None:
        ids, texts, stopped, logprobs = _sample(adapter, prompts, g, cfg, generator)
    else:
        ids, texts, stopped, logprobs = _sample_vllm(engine, adapter, [p["grounding"] for p in step.prompts], step.encoded,
                                                     [None] * len(step.prompts), g, cfg, prune, generator)
    rows = []
    for (q, i), seq, tok, text, stop, lp in zip(owners, seqs, ids, texts, stopped, logprobs):
        enc = step.encoded[q]
        keeps, fallback = keep_masks(parse_output(text, "grounding", n_images=len(enc)), enc, prune)
        rows.append(Rollout("grounding", q, i, -1, text, tok, keeps, seq.n_visual_total, seq.n_visual_kept, stop,
                            fallback, lp))
    return rows


@torch.no_grad()
def sample_sparse(step: StepRollouts, adapter: ModelAdapter, cfg: RolloutSection, prune: PruneConfig,
                  generator: torch.Generator | None, engine: Any = None) -> list[Rollout]:
    """G' rollouts per grounding rollout, on the tokens its boxes kept (+ fused ones); one prefill each.
    `engine`: None (the Python decode loop) or a VllmEngine."""
    g2 = step.sparse_group_size
    prompts = [assemble(adapter, step.prompts[parent.question]["sparse"], step.encoded[parent.question], parent.keeps,
                        fusion=prune.fusion, num_contextual=prune.num_contextual) for parent in step.grounding]
    seqs = [seq for seq in prompts for _ in range(g2)]
    parents = [parent for parent in step.grounding for _ in range(g2)]
    if engine is None:
        ids, texts, stopped, logprobs = _sample(adapter, prompts, g2, cfg, generator)
    else:
        ids, texts, stopped, logprobs = _sample_vllm(
            engine, adapter, [step.prompts[p.question]["sparse"] for p in step.grounding],
            [step.encoded[p.question] for p in step.grounding], [p.keeps for p in step.grounding], g2, cfg, prune, generator)
    return [
        Rollout("sparse", p.question, p.parent, k % g2, text, tok, p.keeps, seq.n_visual_total, seq.n_visual_kept, stop,
                sample_logprobs=lp)
        for k, (p, seq, tok, text, stop, lp) in enumerate(zip(parents, seqs, ids, texts, stopped, logprobs))
    ]


def collect(adapter: ModelAdapter, samples: list[Sample], cfg: RolloutSection, prune: PruneConfig,
            generator: torch.Generator | None, sparse_group_size: int | None = None, engine: Any = None) -> StepRollouts:
    """Encode every image once, then grounding rollouts, then sparse rollouts (the full G x G' tree), decoded by
    the Python loop (engine None) or a VllmEngine (rollout.engine=vllm: vitos' vision tower still runs here)."""
    images = [load_sample_images(s) for s in samples]
    encoded = encode(adapter, images)  # vision tower: once per image for the whole step
    step = StepRollouts(samples, images, encoded, build_prompts(adapter, samples, encoded),
                        cfg.group_size, sparse_group_size or cfg.sparse_group_size or cfg.group_size)
    step.grounding = sample_grounding(step, adapter, cfg, prune, generator, engine)
    step.sparse = sample_sparse(step, adapter, cfg, prune, generator, engine)
    return step


# --------------------------------------------------------------------------------------------------
# Rewards and groups
# --------------------------------------------------------------------------------------------------


@dataclass
class StepRewards:
    """Scalar rewards and GRPO group ids of both branches, plus the components for logging."""

    grounding: torch.Tensor
    """(B*G,) r_i = mean_j r_ij, in (q, i) order."""
    sparse: torch.Tensor
    """(B*G*G',) r'_ij, in (q, i, j) order."""
    grounding_groups: torch.Tensor
    """(B*G,) long: the question index."""
    sparse_groups: torch.Tensor
    """(B*G*G',) long: the question index ('question') or q*G + i ('parent')."""
    grounding_parts: list[dict[str, float | None]]
    """(B*G) per-rollout components {format, iou, accuracy, budget, cross, total}; cross and total averaged over j."""
    sparse_parts: list[dict[str, float | None]]
    """(B*G*G') per-rollout components {format, accuracy, cross, total}."""


def group_ids(n_questions: int, g: int, g2: int, sparse_grouping: str = "question") -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO group ids: (B*G,) for grounding rows and (B*G*G',) for sparse rows, in rollout order."""
    if sparse_grouping not in ("question", "parent"):
        raise ValueError(f"sparse_grouping must be 'question' or 'parent', got {sparse_grouping!r}")
    grounding = torch.arange(n_questions).repeat_interleave(g)  # (B*G,) q
    parents = torch.arange(n_questions * g).repeat_interleave(g2)  # (B*G*G',) q*G + i
    sparse = parents // g if sparse_grouping == "question" else parents
    return grounding, sparse


def score(step: StepRollouts, weights: RewardWeights | None = None, sparse_grouping: str = "question",
          override: RewardOverride | None = None) -> StepRewards:
    """Rewards of every rollout of the step, with cross-feedback between the two branches.

    acc(O'_ij) enters r_ij and acc(O_i) enters r'_ij; both come from the real judge even when `override`
    replaces the totals (so the logged components stay meaningful). With a nonzero `weights.budget` the grounding
    rollout O_i also earns budget = 1 - kept_ratio of its keep masks `O_i.keeps` over the question's images
    (`vitos.rl.rewards.kept_ratio`); otherwise its `budget` part is None.
    """
    g, g2 = step.group_size, step.sparse_group_size
    if len(step.grounding) != len(step.samples) * g or len(step.sparse) != len(step.grounding) * g2:
        raise ValueError(
            f"expected {len(step.samples) * g} grounding and {len(step.samples) * g * g2} sparse rollouts, got "
            f"{len(step.grounding)} and {len(step.sparse)}; rollouts must form the full G x G' tree"
        )
    g_parts: list[dict[str, float | None]] = []
    s_parts: list[dict[str, float | None]] = []
    for q, sample in enumerate(step.samples):
        ground = step.grounding[q * g : (q + 1) * g]
        children = [step.sparse[(q * g + i) * g2 : (q * g + i + 1) * g2] for i in range(g)]
        sparse_acc = [[accuracy_reward(c.text, sample, "sparse") for c in row] for row in children]  # (G, G')
        ratios = None  # (G,) kept-token ratio of each O_i's keep masks, for the budget term (when it is on)
        if weights is not None and weights.budget != 0:
            n_tokens = [e.num_tokens for e in step.encoded[q]]
            ratios = [kept_ratio([None if m is None else int(m.sum()) for m in o.keeps], n_tokens) for o in ground]
        g_rows = grounding_rewards([o.text for o in ground], sparse_acc, sample, weights, ratios)
        ground_acc = [row[0]["accuracy"] for row in g_rows]  # (G,)
        s_rows = sparse_rewards([[c.text for c in row] for row in children], ground_acc, sample, weights)
        for i, row in enumerate(g_rows):
            parts = dict(row[0])
            parts["cross"] = sum(c["cross"] for c in row) / len(row)
            parts["total"] = sum(c["total"] for c in row) / len(row)  # r_i = mean_j r_ij
            if override is not None:
                parts["total"] = float(override(ground[i].text, sample, "grounding"))
            g_parts.append(parts)
        for i, row in enumerate(s_rows):
            for j, parts in enumerate(row):
                parts = dict(parts)
                if override is not None:
                    parts["total"] = float(override(children[i][j].text, sample, "sparse"))
                s_parts.append(parts)
    g_groups, s_groups = group_ids(len(step.samples), g, g2, sparse_grouping)
    return StepRewards(
        grounding=torch.tensor([p["total"] for p in g_parts], dtype=torch.float32),
        sparse=torch.tensor([p["total"] for p in s_parts], dtype=torch.float32),
        grounding_groups=g_groups,
        sparse_groups=s_groups,
        grounding_parts=g_parts,
        sparse_parts=s_parts,
    )


# --------------------------------------------------------------------------------------------------
# Micro-batching
# --------------------------------------------------------------------------------------------------


def split_rows(n_rows: int, n_chunks: int) -> list[range]:
    """Split row indices 0..n_rows-1 into `n_chunks` contiguous, non-empty, near-equal ranges."""
    if not 1 <= n_chunks <= n_rows:
        raise ValueError(f"cannot split {n_rows} rows into {n_chunks} non-empty micro-batches; lower optim.micro_batches")
    base, extra = divmod(n_rows, n_chunks)
    out, start = [], 0
    for k in range(n_chunks):
        end = start + base + (1 if k < extra else 0)
        out.append(range(start, end))
        start = end
    return out


def agg_denominator(lengths: list[int], agg: str) -> int:
    """What the GRPO aggregation `agg` divides by, counted over rows with these completion lengths:
    token-mean: tokens; seq-mean: rows with tokens; dr-grpo: rows (times max_len, fixed separately)."""
    if agg == "token-mean":
        return sum(lengths)
    if agg == "seq-mean":
        return sum(n > 0 for n in lengths)
    if agg == "dr-grpo":
        return len(lengths)
    raise ValueError(f"unknown aggregation {agg!r}")


def loss_weight(chunk_lengths: list[int], denominator: int, agg: str, world_size: int = 1) -> float:
    """Weight w of one micro-batch's (chunk-normalised) loss so that the sum over chunks, averaged over
    `world_size` data-parallel ranks (DDP/FSDP average gradients), equals the loss over ALL rows of all ranks:

        w = agg_denominator(chunk) / denominator * world_size,   denominator = sum over ranks of theirs

    (dr-grpo also needs max_len = the longest completion over all ranks).
    """
    return agg_denominator(chunk_lengths, agg) / max(1, denominator) * world_size


def chunk_weight(chunk_lengths: list[int], all_lengths: list[int], agg: str) -> float:
    """Weight w of a micro-batch loss so that sum over chunks of w * loss(chunk) == loss(all rows), one process.

    `*_lengths` are completion lengths (tokens) of the chunk's rows and of all rows of the update.
    token-mean: w = tokens(chunk) / tokens(all); seq-mean: rows with tokens, same ratio; dr-grpo:
    rows(chunk) / rows(all) (with max_len fixed to the longest completion of the whole update).
    """
    return loss_weight(chunk_lengths, agg_denominator(all_lengths, agg), agg)
