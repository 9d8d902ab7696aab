"""vitos: token-sparse medical multimodal reasoning via dual-stream reinforcement learning (ViToS).

Package map (one concept per module):
  config.py        typed dataclass configs, YAML values + key=value overrides
  images.py        image loading (JPEG/PNG/16-bit/DICOM) with limits and clear errors
  prompts.py       prompt templates and the single output parser (<think>, <box>, <answer>)
  answers.py       answer normalisation and judging (shared by rewards and evaluation)
  models/          one adapter per model family + tiny offline checkpoints
  pruning/         boxes -> keep masks, token fusion, sparse sequence assembly
  engine.py        encode once -> build (full or sparse) sequences -> decode
  infer.py         ground -> prune -> answer for one image; overlay drawing
  rl/              GRPO math, rewards, rollouts, the trainer
  data/            row readers and the MedPhantom generator
  eval/            benchmarks, scoring, runner, training-free pruning baselines
"""

__version__ = "0.1.0"
