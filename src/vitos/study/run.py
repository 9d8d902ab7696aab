"""`vitos study`: does the paper's mechanism earn its result? Seeds x schedules x reward ablations.

    vitos study --smoke --out runs/study-smoke      # CI-sized (minutes): same rows, same files, tiny budgets
    vitos study --out runs/study [key=value ...]    # the full study (outside CI; see StudyConfig for the grid)

For each seed: one warm start (`warm_start=builtin`: the checkpoint shipped for `vitos demo`, the same for
every seed — only RL and the test draw change; `warm_start=train`: the demo's warm-start stages per seed),
then one RL run per variant = (schedule, cross-feedback on/off, IoU reward on/off), each evaluated on the
same `n_test` test questions (vitos.study.evaluate) with these rows:

    per seed     majority (per-type majority training answer), warm_start/full, warm_start/vitos
    per run      <variant>/vitos (after RL), <variant>/full (the SAME model, all tokens), <variant>/oracle (GT
                 boxes), <variant>/constant box (best constant box on the training split), <variant>/center,
                 /random, /visionzip at that run's per-question ViToS budget

Then (vitos.study.report): every row pooled over seeds with Wilson intervals and seed means with t-intervals;
paired tests pooled over seeds (after RL vs warm start, ViToS vs center, ViToS vs constant box, each
sequential schedule vs joint, cross-feedback on vs off); the targets; study.md, study.json and plots
(study_accuracy.png with 95 % intervals and the majority line; grad_cosine.png).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitos.study.report import variant_name  # noqa: F401  (re-exported)


@dataclass
class StudyConfig:
    """The grid and budgets of one study (YAML values or key=value overrides)."""

    seeds: list[int] = field(default_factory=lambda: [4, 5, 6])
    """Data, warm-start and RL seeds. Seeds 0-3 are spent: the demo's defaults (locate_steps 600 among them)
    were chosen after looking at their test splits, so the study's default seeds are fresh ones."""
    variants: list[str] = field(default_factory=lambda: [
        "interleaved+cross+iou", "stagewise+cross+iou", "joint+cross+iou", "interleaved+nocross+iou",
        "interleaved+cross+noiou"])
    """RL runs per seed, as `schedule+cross|nocross+iou|noiou` names. The default changes one factor at a time
    around the main variant (schedule, cross-feedback, IoU reward): every paired test the issue asks for, in
    5 runs per seed instead of the full 12 (the CPU budget). [] = every combination of the three lists below."""
    schedules: list[str] = field(default_factory=lambda: ["stagewise", "interleaved", "joint"])
    """Branch schedules (vitos.rl.config.ScheduleSection.name); used only when `variants` is []."""
    cross_feedback: list[bool] = field(default_factory=lambda: [True, False])
    """Cross-feedback on (paper) / off (rewards.cross = 0); used only when `variants` is []."""
    iou_reward: list[bool] = field(default_factory=lambda: [True, False])
    """IoU reward on (demo weight) / off (rewards.iou = 0); used only when `variants` is []."""
    main: str = "interleaved+cross+iou"
    """The variant whose targets are reported (`schedule+cross|nocross+iou|noiou`)."""
    warm_start: str = "train"
    """train (the demo's warm-start stages, run per seed: one warm start per seed), builtin (the shipped demo
    warm start for every seed: only RL and the test draw change) or a folder."""
    n_train: int = 4000
    """MedPhantom training questions (RL pool, majority answers, constant box)."""
    n_test: int = 2000
    """MedPhantom test questions every row is measured on."""
    rl_steps: int = 60
    """RL steps per run."""
    grad_cosine_every: int = 5
    """Gradient-cosine measurement every this many RL steps (0 = never)."""
    baselines: list[str] = field(default_factory=lambda: ["center", "random", "fastv", "visionzip"])
    """Training-free selectors at each run's ViToS budget (center, random, fastv, visionzip)."""
    out_dir: str = "runs/study"
    """Where study.md, study.json, plots and the runs go."""
    demo_overrides: dict[str, Any] = field(default_factory=dict)
    """DemoConfig values for data, warm start, RL and decoding (e.g. {"group_size": 4})."""
    phantom: dict[str, Any] = field(default_factory=dict)
    """PhantomConfig overrides on top of the demo's data (DemoConfig.phantom, PHANTOM_V3); {} = the demo's data."""
    workers: int = 2
    """Processes running seeds and RL runs side by side (one torch thread each). The numbers do not depend on
    it; 1 = everything in this process, in order (the path for a debugger)."""


SMOKE: dict[str, Any] = {"seeds": [0, 1], "variants": [], "schedules": ["interleaved", "joint"],
                         "cross_feedback": [True, False], "iou_reward": [True], "warm_start": "builtin", "n_train": 40, "n_test": 24, "rl_steps": 2, "grad_cosine_every": 1,
                         "baselines": ["center", "random", "fastv"],
                         "demo_overrides": {"rl_batch_size": 2, "group_size": 2, "sparse_group_size": 2,
                                            "max_new_tokens": 48, "rl_questions": 0}}
"""`--smoke`: the same rows and files on tiny budgets (2 seeds x 2 schedules x cross on/off, 2 RL steps,
24 test questions): minutes, for CI. Its numbers mean nothing."""


def _log(msg: str) -> None:
    print(f"[study] {msg}", flush=True)


def run_study(cfg: StudyConfig, command: str = "vitos study") -> dict[str, Any]:
    """Run the grid; returns the study dict (also written as study.json / study.md under out_dir).

    The work is one `prepare_seed` task per seed (data, warm start, the before-RL rows) and one `run_variant`
    task per (seed, variant) (RL, then the after-RL rows). With `workers` > 1 they run in that many spawned
    processes (one torch thread each; a variant starts once its seed is prepared); every task seeds its own
    RNGs and reads its inputs from disk, so the numbers do not depend on `workers` or on the order tasks
    finish in (tests/test_study.py checks workers=1 against workers=2). workers=1 runs everything in this
    process, in order: the path a debugger can step through."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    import multiprocessing

    from vitos.study import plots, report

    t_all = time.perf_counter()
    torch.set_num_threads(1)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variants = study_variants(cfg)
    prepared: dict[int, dict[str, Any]] = {}
    done: dict[tuple[int, tuple[str, bool, bool]], dict[str, Any]] = {}

    def finished_seeds() -> list[int]:  # in cfg.seeds order, a seed counts once all its tasks are in
        return [sd for sd in cfg.seeds if sd in prepared and all((sd, v) in done for v in variants)]

    def snapshot() -> dict[str, Any]:
        return _collect(cfg, finished_seeds(), prepared, done, variants, command, time.perf_counter() - t_all)

    if cfg.workers <= 1:
        for seed in cfg.seeds:
            prepared[seed] = prepare_seed(cfg, seed)
            for v in variants:
                done[(seed, v)] = run_variant(cfg, seed, v)
            report.write(snapshot(), out)  # after every seed: a long run that is stopped keeps its finished seeds
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx, initializer=_worker_init) as pool:
            pending = {pool.submit(prepare_seed, cfg, seed): ("seed", seed, None) for seed in cfg.seeds}
            n_finished = 0
            while pending:
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in ready:
                    kind, seed, v = pending.pop(fut)
                    result = fut.result()  # a failed task stops the study with its own traceback
                    if kind == "seed":
                        prepared[seed] = result
                        pending.update({pool.submit(run_variant, cfg, seed, vv): ("run", seed, vv) for vv in variants})
                    else:
                        done[(seed, v)] = result
                if len(finished_seeds()) > n_finished:
                    n_finished = len(finished_seeds())
                    report.write(snapshot(), out)
    study = snapshot()
    report.write(study, out)
    plots.plot_study_rows(study["rows"], out / "study_accuracy.png", chance=study["rows_by_name"]["majority"]["accuracy"])
    plots.plot_grad_cosine(study["runs"], out / "grad_cosine.png")
    return study


def _worker_init() -> None:
    torch.set_num_threads(1)


def _seed_setup(cfg: StudyConfig, seed: int, write: bool) -> dict[str, Any]:
    """The seed's demo config, eval settings, data (written under out_dir/data-<seed> when `write`: by
    prepare_seed; read back by the RL runs), test images and best constant box: what both task kinds need,
    rebuilt the same way in every process."""
    from vitos.data.medphantom import PhantomConfig, write_dataset
    from vitos.data.readers import read_rows
    from vitos.demo import DemoConfig, eval_settings
    from vitos.pipeline import load_sample_images
    from vitos.study.evaluate import best_constant_box

    out = Path(cfg.out_dir)
    demo = DemoConfig(**{**cfg.demo_overrides, "seed": seed, "n_train": cfg.n_train, "n_test": cfg.n_test,
                         "rl_steps": cfg.rl_steps})
    folder = out / f"data-{seed}"
    if not write:
        paths = {"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")}
    else:
        paths = write_dataset(PhantomConfig(**{"question_mix": dict(demo.question_mix), **demo.phantom, **cfg.phantom,
                                               "seed": seed, "n_train": cfg.n_train, "n_test": cfg.n_test}), folder)
    train_set, test = read_rows(paths["train"]).samples, read_rows(paths["test"]).samples
    return {"demo": demo, "settings": eval_settings(demo), "paths": paths, "train": train_set, "test": test,
            "images": [load_sample_images(t) for t in test],
            "constant": best_constant_box([t.boxes for t in train_set])}


def prepare_seed(cfg: StudyConfig, seed: int) -> dict[str, Any]:
    """One seed before RL: its data and warm start (`_warm_start`), the majority row, the warm start's rows
    (full, vitos, oracle, constant box, center) and the design-property inputs (evidence coverage)."""
    from vitos.demo import DemoData
    from vitos.models import load_model
    from vitos.pipeline import encode
    from vitos.study.evaluate import answer_balance, evaluate_majority, evaluate_run, evidence_coverage

    torch.set_num_threads(1)
    d = _seed_setup(cfg, seed, write=True)
    warm_dir = _warm_start(cfg, d["demo"], DemoData(d["paths"], d["train"], d["test"], d["images"]),
                           Path(cfg.out_dir) / f"warm-{seed}")
    warm = load_model(str(warm_dir), dtype="float32", device="cpu")
    rows = {"majority": evaluate_majority(d["test"], d["train"])}
    warm_encoded = encode(warm, d["images"])
    warm_rows = evaluate_run(warm, d["test"], d["images"], d["settings"], ["center"], seed, d["constant"], warm_encoded)
    rows.update({f"warm_start/{n}": warm_rows[n] for n in ("full", "vitos", "oracle", "constant box", "center")})
    coverage = evidence_coverage(warm_encoded, d["test"], d["settings"], warm_rows["vitos"], seed)
    _log(f"seed {seed}: warm start full {rows['warm_start/full']['accuracy']:.1%}, ViToS "
         f"{rows['warm_start/vitos']['accuracy']:.1%}, oracle {warm_rows['oracle']['accuracy']:.1%}, "
         f"majority {rows['majority']['accuracy']:.1%}")
    return {"rows": rows, "coverage": coverage, "answer_balance": answer_balance(d["test"]),
            "constant_box": d["constant"], "warm_dir": str(warm_dir)}


def run_variant(cfg: StudyConfig, seed: int, variant: tuple[str, bool, bool]) -> dict[str, Any]:
    """One RL run (schedule, cross-feedback, IoU reward) from the seed's warm start (prepare_seed must have
    run), then its rows (vitos, full, oracle, constant box and the baselines at its budget) and its record
    (seconds, mIoU, distinct boxes, the gradient-cosine and reward curves)."""
    from vitos.demo import DemoConfig, _train_config, rl_pool
    from vitos.models import load_model
    from vitos.rl.checkpoint import read_metrics
    from vitos.rl.trainer import train
    from vitos.study.evaluate import evaluate_run

    torch.set_num_threads(1)
    sch, cross, iou = variant
    name = variant_name(sch, cross, iou)
    d = _seed_setup(cfg, seed, write=False)
    demo = d["demo"]
    warm_dir = _warm_start(cfg, demo, None, Path(cfg.out_dir) / f"warm-{seed}")  # prepare_seed trained it
    run_dir = Path(cfg.out_dir) / f"runs/{name}/seed-{seed}"
    pool = rl_pool(Path(d["paths"]["train"]), demo.rl_questions)
    tcfg = _train_config(DemoConfig(**{**asdict(demo), "schedule": sch}), warm_dir, pool, run_dir)
    tcfg.rewards.cross = 1.0 if cross else 0.0
    tcfg.rewards.iou = tcfg.rewards.iou if iou else 0.0
    tcfg.logging.log_grad_cosine = cfg.grad_cosine_every > 0
    tcfg.logging.grad_cosine_every = cfg.grad_cosine_every
    tcfg.logging.progress = cfg.workers <= 1 and sys.stderr.isatty()  # a bar on a terminal; the [study] lines either way
    t0 = time.perf_counter()
    _log(f"seed {seed} {name}: RL, {tcfg.schedule.total_steps} steps")
    train(tcfg, overwrite=True)  # a rerun into the same folder replaces that run
    model = load_model(str(run_dir / "final"), dtype="float32", device="cpu")
    rows = evaluate_run(model, d["test"], d["images"], d["settings"], cfg.baselines, seed, d["constant"])
    del model
    curve = read_metrics(run_dir / "metrics.jsonl")
    _log(f"seed {seed} {name}: ViToS {rows['vitos']['accuracy']:.1%} (full {rows['full']['accuracy']:.1%}, "
         f"center {rows['center']['accuracy']:.1%}), kept {rows['vitos']['kept']:.0%}")
    return {"rows": rows, "run": {
        "variant": name, "seed": seed, "seconds": time.perf_counter() - t0,
        "accuracy_vitos": rows["vitos"]["accuracy"], "kept": rows["vitos"]["kept"],
        "miou": rows["vitos"]["miou"], "distinct_boxes": rows["vitos"]["distinct_boxes"],
        "grad_cosine": [(m["step"], m.get("grad_cosine")) for m in curve if m.get("grad_cosine") is not None],
        "reward": [(m["step"], m.get("grounding/reward"), m.get("sparse/reward")) for m in curve]}}


def _collect(cfg: StudyConfig, seeds: list[int], prepared: dict[int, dict[str, Any]],
             done: dict[tuple[int, tuple[str, bool, bool]], dict[str, Any]], variants: list, command: str,
             seconds: float) -> dict[str, Any]:
    """The finished tasks of `seeds` in seed order (paired tests pair question i of seed k across rows), as
    the study dict."""
    per_seed: dict[str, list[dict[str, Any]]] = {}
    runs: list[dict[str, Any]] = []
    design: dict[str, Any] = {}
    for seed in seeds:
        p = prepared[seed]
        for row, res in p["rows"].items():
            per_seed.setdefault(row, []).append(res)
        design.setdefault("coverage", []).append(p["coverage"])
        design.setdefault("answer_balance", p["answer_balance"])
        design.setdefault("constant_box", p["constant_box"])
        for v in variants:
            r = done[(seed, v)]
            for row, res in r["rows"].items():
                per_seed.setdefault(f"{variant_name(*v)}/{row}", []).append(res)
            runs.append(r["run"])
    return _assemble(cfg, per_seed, runs, design, variants, command, seconds)


def study_variants(cfg: StudyConfig) -> list[tuple[str, bool, bool]]:
    """(schedule, cross-feedback, IoU reward) per RL run: `cfg.variants` parsed, or with [] the product of
    schedules x cross_feedback x iou_reward. A malformed name is a ConfigError naming the expected form."""
    from vitos.config import ConfigError

    if not cfg.variants:
        return [(sch, c, i) for sch in cfg.schedules for c in cfg.cross_feedback for i in cfg.iou_reward]
    out = []
    for name in cfg.variants:
        parts = name.split("+")
        if len(parts) != 3 or parts[1] not in ("cross", "nocross") or parts[2] not in ("iou", "noiou") or \
                parts[0] not in ("stagewise", "interleaved", "joint"):
            raise ConfigError(f"variants: {name!r} is not `stagewise|interleaved|joint` + `cross|nocross` + "
                              "`iou|noiou`, e.g. 'interleaved+cross+iou'")
        out.append((parts[0], parts[1] == "cross", parts[2] == "iou"))
    return out


def _warm_start(cfg: StudyConfig, demo: Any, data: Any, folder: Path) -> Path:
    """The seed's warm-started checkpoint: the shipped one or a given folder, or (warm_start=train) the demo's
    own warm-start stage (vitos.demo.stages.make_warm_start) run into folder/warm_start — kept there, so a
    rerun of the study into the same folder reuses it."""
    from vitos.demo import Say, make_warm_start, resolve_warm_start

    if cfg.warm_start != "train":
        return resolve_warm_start(cfg.warm_start)
    if (folder / "warm_start" / "config.json").exists():
        return folder / "warm_start"
    if data is None:
        raise RuntimeError(f"no warm start in {folder}: run prepare_seed for seed {demo.seed} first")
    _log(f"seed {demo.seed}: warm start (the demo's stages)")
    torch.manual_seed(demo.seed)  # the RNG state `vitos demo` has at this stage: same seed, same warm start
    return make_warm_start(demo, data, folder, Say(quiet=not sys.stderr.isatty())).folder


def design_properties(rows: dict[str, dict[str, Any]], coverage: list[dict[str, float]]) -> dict[str, Any]:
    """The benchmark's design properties (before RL), each with its bound and whether it holds:
    the reader given GT boxes >= 85 %; >= 15 points above the same model on all tokens; >= 10 points above
    ViToS with its own boxes (room for RL); ViToS above the per-type majority; a centre crop at the ViToS
    budget covers the evidence no more often than a random crop of the same size (chance)."""
    acc = {k: rows[k]["accuracy"] for k in ("warm_start/oracle", "warm_start/full", "warm_start/vitos", "majority") if k in rows}
    if len(acc) < 4:
        return {}
    center = sum(c["center_crop_covers_evidence"] for c in coverage) / max(1, len(coverage))
    chance = sum(c["random_crop_covers_evidence"] for c in coverage) / max(1, len(coverage))
    o, f, v, m = acc["warm_start/oracle"], acc["warm_start/full"], acc["warm_start/vitos"], acc["majority"]
    return {
        "oracle_ge_85": {"value": o, "holds": o >= 0.85},
        "oracle_minus_full_ge_15pts": {"value": o - f, "holds": o - f >= 0.15},
        "oracle_minus_vitos_ge_10pts": {"value": o - v, "holds": o - v >= 0.10},
        "vitos_above_majority": {"value": v - m, "holds": v > m},
        "center_crop_coverage_le_chance": {"value": center, "chance": chance, "holds": center <= chance + 0.05},
    }


def _assemble(cfg: StudyConfig, per_seed: dict[str, list[dict[str, Any]]], runs: list[dict[str, Any]],
              design: dict[str, Any], variants: list, command: str, seconds: float) -> dict[str, Any]:
    from vitos.study import report

    rows = [report.cell(name, res) for name, res in per_seed.items()]
    by_name = {r["name"]: r for r in rows}
    names = {variant_name(*v) for v in variants}
    tests = report.paired_tests(per_seed, sorted(names))
    design["before_rl"] = {k: by_name[k]["accuracy"] for k in by_name if k.startswith("warm_start/") or k == "majority"}
    design["properties"] = design_properties(by_name, design.get("coverage", []))
    main = cfg.main if cfg.main in names else sorted(names)[0]
    return {
        "meta": {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), "
                 f"{cfg.workers} worker process(es) x {torch.get_num_threads()} torch thread(s), torch {torch.__version__}", "command": command, "seconds": seconds, "main": main,
                 "config": asdict(cfg)},
        "rows": rows, "rows_by_name": by_name, "comparisons": list(tests.values()),
        "targets": report.targets(by_name, tests, main), "runs": runs, "design": design,
    }


def main_study(argv: list[str] | None = None) -> int:
    """`vitos study [--smoke] [--out DIR] [--config YAML] [key=value ...]`."""
    from vitos.config import ConfigError, load_config

    p = argparse.ArgumentParser(prog="vitos study", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CI-sized run: same rows and files, tiny budgets")
    p.add_argument("--out", default=None, help="output folder (default runs/study or runs/study-smoke)")
    p.add_argument("--config", default=None, help="YAML file of StudyConfig values")
    p.add_argument("overrides", nargs="*", help="key=value overrides of StudyConfig fields, e.g. seeds=[0,1]")
    args = p.parse_args(argv)
    import json

    try:
        preset = [f"{k}={json.dumps(v)}" for k, v in SMOKE.items()] if args.smoke else []
        cfg = load_config(StudyConfig, args.config, preset + list(args.overrides))
        cfg.out_dir = args.out or ("runs/study-smoke" if args.smoke else cfg.out_dir)
    except (ConfigError, FileNotFoundError) as err:
        print(f"vitos study: error: {err}", file=sys.stderr)
        return 2
    run_study(cfg, command="vitos study " + " ".join(argv if argv is not None else sys.argv[2:]))
    print((Path(cfg.out_dir) / "study.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main_study(sys.argv[1:]))
