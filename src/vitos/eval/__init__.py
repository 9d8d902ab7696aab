"""Evaluation: benchmarks, scoring, the resumable runner, training-free pruning baselines and run comparison.

    vitos eval --model M --benchmarks vqa_rad,slake --mode vitos --out runs/lingshu/vitos
    vitos eval --model M --benchmarks vqa_rad,slake --mode fastv --budget-from runs/lingshu/vitos \\
        --out runs/lingshu/fastv
    vitos compare runs/lingshu/vitos runs/lingshu/full

Modules: `benchmarks` (one loader per benchmark), `scoring` (accuracy, relative performance, tables),
`runner` (`evaluate`, `main_eval`), `baselines` (random / center / FastV / VisionZip keep masks),
`judge_llm` (optional LLM judge for open questions) and `compare` (`main_compare`).
"""
