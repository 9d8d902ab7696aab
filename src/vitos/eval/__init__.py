"""Evaluation: benchmarks, scoring, the resumable loop, training-free pruning baselines and run comparison.

    vitos eval --model M --benchmarks vqa_rad,slake --mode vitos --out runs/lingshu/vitos
    vitos eval --model M --benchmarks vqa_rad,slake --mode fastv --budget-from runs/lingshu/vitos \\
        --out runs/lingshu/fastv
    vitos eval --model M --benchmarks vqa_rad,slake --mode full --protocol medevalkit --out runs/lingshu/kit
    vitos compare runs/lingshu/vitos runs/lingshu/full

Modules: `benchmarks` (one loader per benchmark; bad rows skipped and reported), `loop` (`EvalConfig`,
protocol presets, `evaluate`), `predictions` (the resumable log), `fingerprint` (what a model is: the key of
resumable predictions), `reports` (tables, plot), `cli`
(`main_eval`), `runner` (the public names of those four), `scoring` (accuracy with Wilson intervals,
relative performance, tables), `medevalkit` (`--compat medevalkit`: the kit's verdicts), `baselines`
(random / center / FastV / VisionZip keep masks), `judge_llm` (optional LLM judge for open questions)
and `compare` (`main_compare`, paired intervals). The honest judge is `vitos.answers` (docs/scoring.md).
"""
