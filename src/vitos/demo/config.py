"""`vitos demo`'s knobs: DemoConfig, the --quick preset, the shipped warm start, the evaluation settings.

    cfg = build_config(quick=True, overrides=["rl_steps=7"], seed=1, out_dir="runs/x")   # what the CLI does
    cfg = quick_config(n_test=12)                                                       # in tests
    s = eval_settings(cfg)          # vitos.study.evaluate.EvalSettings with the demo's decoding and pruning
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitos.data.medphantom import PHANTOM_V3

QUICK_PRESET: dict[str, Any] = {
    "reuse_warm_start": "builtin",
    "n_train": 160,
    "n_test": 60,
    "curve_ratios": [],
    "baselines": ["center"],
    "n_overlays": 2,
}
"""What `--quick` changes (CI, <= 3 min): RL starts from the warm start shipped in the package (the one the
default demo writes, BUILTIN_WARM_START) instead of making one; 160 training questions (exactly the
default's RL pool, so the RL stage is the default run's, step for step), 60 test questions, one baseline."""


@dataclass
class DemoConfig:
    """Every knob of `vitos demo` (defaults: the full demo; `--quick` applies QUICK_PRESET first)."""

    seed: int = 0
    """Seeds the data, the tiny model's weights, the warm start's order and the RL sampler."""
    out_dir: str = "runs/demo"
    """Where every artefact goes (see the module docstring)."""
    threads: int = 1
    """torch CPU threads (0 = torch's default). 1 by default: every figure in the README is then
    reproducible bit for bit, and the tiny model's small matrices gain little from a second thread."""

    # --- data ---------------------------------------------------------------------------------------
    n_train: int = 4000
    """MedPhantom training questions (the warm start uses all of them; RL draws from the first
    `rl_questions`). 4,000: with 400 the vision tower's pre-training did not generalise (oracle reader
    67 %); with 4,000 and 600 steps it reads 89 % of questions right from the ground-truth boxes."""
    n_test: int = 500
    """MedPhantom test questions every figure is measured on (500: a 95 % interval of about +-4 points)."""
    phantom: dict[str, Any] = field(default_factory=lambda: {k: list(v) if isinstance(v, tuple) else v
                                                             for k, v in PHANTOM_V3.items()})
    """PhantomConfig overrides of the data (default vitos.data.medphantom.PHANTOM_V3: the organ anywhere in a
    body that fills the field of view, every distractor a small rimmed look-alike organ; {} = MedPhantom v1)."""
    question_mix: dict[str, float] = field(
        default_factory=lambda: {"presence": 0.4, "brightness_choice": 0.3, "brightness_open": 0.15, "count": 0.15}
    )
    """MedPhantom question types and weights (see vitos.data.medphantom.QUESTION_TYPES)."""

    # --- model --------------------------------------------------------------------------------------
    hidden: int = 64
    """Width of the tiny model (language model and vision tower)."""
    layers: int = 2
    """Language-model layers of the tiny model."""
    vision_depth: int = 2
    """Vision-tower blocks of the tiny model."""
    image_pixels: int = 224 * 224
    """Processor pixel cap: 224 x 224 = an 8 x 8 grid of 64 visual tokens per image."""

    # --- pruning (shared by warm start, RL and evaluation) --------------------------------------------
    margin: float = 0.0
    """Box dilation (normalised units) before tokens are selected."""
    min_keep: int = 1
    """Fewest tokens kept per image."""
    fusion: str = "none"
    """How pruned tokens are folded in: none, merge or contextual (vitos.pruning.fusion). `none` here: the
    tiny model's features are alike enough that `merge` folds the distractors into the kept tokens."""

    # --- warm start (vitos.sft) ---------------------------------------------------------------------
    vision_steps: int = 600
    """Dense pre-training steps of the random vision tower (spot class, evidence flag, cell position per
    token; vitos.sft.pretrain_vision). The tower is then frozen. 600 (on 4,000 images): at 150 on 400 the
    oracle reader stayed near 67 %, so better boxes could not pay."""
    vision_box_weight: float = 10.0
    """Weight of the dense box-regression target of that pre-training (VisionPretrainConfig.box_weight):
    evidence tokens then carry their box, and the LM only has to find them and read it out."""
    vision_mask_spot_cells: bool = True
    """VisionPretrainConfig.mask_spot_cells: no evidence flag or box target at cells holding a spot, so the
    tower never tells a reader of all tokens which spot lies in the organ (measured, seed 0, n = 500: with
    the targets at spot cells full tokens scored 81 % against the oracle's 90 %; without, with PHANTOM_V3's
    rimmed decoys, 64 % against 89 %)."""
    read_steps: int = 400
    """Warm-start steps on short targets first (2 x sft_batch_size questions each, `read_sequences`): the
    LM learns to read the kept tokens before anything else."""
    read_sequences: list[str] = field(default_factory=lambda: ["sparse"])
    """Targets of those steps (vitos.sft.SFTConfig.sequences)."""
    locate_steps: int = 600
    """Then steps on box targets alone (2 x sft_batch_size questions each, `locate_sequences`, constant lr):
    the LM learns to write the box of the organ it sees. 600, not 300: at 300 the warm start's boxes
    collapsed among PHANTOM_V3's decoys (22 distinct boxes over 2,000 test images, mIoU 0.09) and RL had
    nothing to refine (README, the study); at 600, 79 distinct, mIoU 0.17, and RL then beat the centre crop
    and the constant box (README, "locate 600")."""
    locate_sequences: list[str] = field(default_factory=lambda: ["where", "grounding"])
    """Targets of those steps: 'where' (short prompt) beside 'grounding' (full prompt) in every batch."""
    sft_steps: int = 200
    """Then steps on every target of both branches (cosine decay)."""
    sft_sequences: list[str] = field(default_factory=lambda: ["grounding", "sparse", "full", "where"])
    """Targets of those steps (vitos.sft.SFTConfig.sequences); 'full' trains the full-token baseline's input."""
    sft_batch_size: int = 8
    """Questions per warm-start step."""
    sft_lr: float = 2e-3
    """Warm-start peak learning rate (cosine decay)."""
    think: str = "compact"
    """Reasoning targets of the warm start (vitos.sft.SFTConfig.think)."""
    box_jitter: float = 0.03
    """Warm start: jitter of the GT box the sparse target is pruned with (robustness to real boxes)."""

    # --- RL (vitos.rl.trainer) ----------------------------------------------------------------------
    rl_steps: int = 60
    """GRPO steps (one step = rl_batch_size questions, G grounding and G x G' sparse rollouts each)."""
    rl_questions: int = 160
    """RL draws its questions from the first this-many training questions (0 = all), so its steps
    revisit each one (60 x 4 / 160 = 1.5 epochs) and the reward curve compares like with like. Measured
    from one warm start: all 400 -> neither branch's reward rose; 64 -> both rose, but the test accuracy
    and mIoU fell (the pool was memorised); 160 -> both rose, test figures held."""
    rl_batch_size: int = 4
    """Questions per RL step."""
    group_size: int = 8
    """G: grounding rollouts per question."""
    sparse_group_size: int = 2
    """G': sparse rollouts per grounding rollout."""
    rl_lr: float = 1e-4
    """RL learning rate (full fine-tuning of the language model; the vision tower is frozen)."""
    schedule: str = "interleaved"
    """Branch schedule: stagewise (authors), interleaved or joint (vitos.rl.config.ScheduleSection)."""
    stage1_fraction: float = 0.5
    """Stagewise only: fraction of rl_steps spent on the grounding objective."""
    iou_weight: float = 5.0
    """Weight of the grounding branch's IoU reward (vitos.rl.rewards.RewardWeights.iou; the other terms stay
    1, as in the paper). Why 5: within a group of G boxes the IoU varies by a few hundredths while the
    accuracy and cross-feedback terms jump by 1, so at weight 1-2 the grounding advantage is all about
    answers (measured: rollout IoU flat over RL); at 5 the rollouts' IoU rose (0.40 -> 0.43)."""
    iou_guard: bool = True
    """Collapse guard (vitos.rl.rewards.RewardWeights.iou_reference): the IoU reward pays only what a box
    finds beyond the best constant box of the RL pool, so collapsing onto the typical box earns nothing
    (the first study's after-RL ViToS did not beat that box)."""
    temperature: float = 0.7
    """Rollout sampling temperature (below 1: fewer malformed boxes, rollouts nearer the greedy policy
    that evaluation decodes; at 1.0 a third of the tiny model's sampled boxes did not parse)."""
    max_new_tokens: int = 64
    """Longest completion, rollouts and evaluation alike."""

    reuse_warm_start: str | None = None
    """Skip stages 2-3 and start RL from this warm-started checkpoint: a previous run's warm_start/, or
    'builtin' for the one shipped in the package (BUILTIN_WARM_START; `--quick` uses it)."""

    # --- evaluation ---------------------------------------------------------------------------------
    baselines: list[str] = field(default_factory=lambda: ["center", "random"])
    """Training-free baselines at ViToS's per-sample token budget; the first is `accuracy_baseline`."""
    curve_ratios: list[float] = field(default_factory=lambda: [0.25, 0.5])
    """Extra fixed keep ratios at which the first baseline is run, for the accuracy-vs-kept plot."""
    eval_batch_size: int = 25
    """Test questions per generate call."""
    n_overlays: int = 4
    """Test images drawn with their kept tokens (warm start vs RL)."""


BUILTIN_WARM_START = Path(__file__).parent.parent / "assets" / "demo_warm_start"
"""The warm start shipped with the package: `vitos demo` with its defaults (seed 0) wrote it to
runs/demo/warm_start/, and it was copied here unchanged (provenance.json inside says what made it and what
it scored). Refresh it after changing the model, MedPhantom or the warm start:
`vitos demo --out runs/demo && cp runs/demo/warm_start/* src/vitos/assets/demo_warm_start/`."""


def resolve_warm_start(value: str) -> Path:
    """`reuse_warm_start` as a folder: 'builtin' -> BUILTIN_WARM_START; a missing folder is an error."""
    path = BUILTIN_WARM_START if value == "builtin" else Path(value)
    if not (path / "config.json").is_file():
        hint = ("the package was installed without its assets; reinstall it (pip install -e .)" if value == "builtin"
                else "pass the warm_start/ folder of a finished `vitos demo` run, or 'builtin'")
        raise FileNotFoundError(f"reuse_warm_start={value!r}: no checkpoint (config.json) in {path}; {hint}")
    return path


def quick_config(**overrides: Any) -> DemoConfig:
    """DemoConfig with QUICK_PRESET applied, then `overrides`."""
    return DemoConfig(**{**QUICK_PRESET, **overrides})


def build_config(quick: bool = False, config_path: str | None = None, overrides: list[str] | None = None,
                 seed: int | None = None, out_dir: str | None = None) -> DemoConfig:
    """Defaults <- QUICK_PRESET (with --quick) <- YAML file <- key=value overrides <- --seed / --out."""
    from vitos.config import load_config

    preset = [f"{k}={json.dumps(v)}" for k, v in QUICK_PRESET.items()] if quick else []
    cfg = load_config(DemoConfig, None, preset) if quick else DemoConfig()
    if config_path or overrides:
        # Re-apply the preset under the user's values: YAML and overrides win over --quick.
        import yaml

        values = {**(asdict(cfg)), **(yaml.safe_load(Path(config_path).read_text()) if config_path else {})}
        tmp = [f"{k}={json.dumps(v)}" for k, v in values.items()] + list(overrides or [])
        cfg = load_config(DemoConfig, None, tmp)
    if seed is not None:
        cfg.seed = seed
    if out_dir is not None:
        cfg.out_dir = out_dir
    return cfg


def eval_settings(cfg: DemoConfig) -> Any:
    """The demo's decoding and pruning settings for the shared evaluation (vitos.study.evaluate)."""
    from vitos.study.evaluate import EvalSettings

    return EvalSettings(margin=cfg.margin, min_keep=cfg.min_keep, fusion=cfg.fusion, max_new_tokens=cfg.max_new_tokens,
                        batch_size=cfg.eval_batch_size)
