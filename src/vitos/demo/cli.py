"""`vitos demo` on the command line: parse, run every stage (vitos.demo.run.run_demo), print the results.

    vitos demo [--quick] [--json OUT] [--out DIR] [--seed N] [--config YAML] [--quiet] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vitos.demo.config import build_config
from vitos.demo.run import run_demo


def print_results(summary: dict[str, Any]) -> None:
    """The table, the headline figures, the reward curves' rise and the study's targets with their figures."""
    from vitos.study.report import target_lines

    def f(key: str, fmt: str) -> str:  # None (e.g. no relative performance at 0 % full-token accuracy) -> "-"
        return "-" if summary.get(key) is None else format(summary[key], fmt)

    print()
    print(summary["table"])
    print()
    print(f"relative performance {f('relative_performance', '.1%')} (ViToS / the same RL model on all tokens) at "
          f"{f('kept_token_ratio', '.1%')} kept visual tokens; warm start {f('relative_performance_warm_start', '.1%')}; "
          f"grounding mIoU {f('miou_warm_start', '.3f')} (warm start) -> {f('miou_rl', '.3f')} (RL)")
    for b, r in summary.get("reward_rise", {}).items():
        if r is not None:
            print(f"{b} reward: {r['first_third']:.3f} (first third of RL) -> {r['last_third']:.3f} (last third)")
    n = (summary.get("config") or {}).get("n_test", "?")
    print(f"targets (`vitos study`'s, main variant {summary.get('main_variant', '?')}; ONE seed at n = {n} test "
          "questions: a noisy check, not the study — `vitos study` pools seeds for a claim):")
    for line in target_lines(summary.get("targets", {}), summary.get("target_figures", {})):
        print(f"  {line}")


def main_demo(argv: list[str] | None = None) -> int:
    """`vitos demo [--quick] [--json OUT] [--out DIR] [--seed N] [--config YAML] [key=value ...]`."""
    import vitos.demo

    p = argparse.ArgumentParser(prog="vitos demo", description=(vitos.demo.__doc__ or "").split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI preset: <= 3 min on 2 CPU cores")
    p.add_argument("--json", dest="json_out", default=None, help="also write the summary JSON here")
    p.add_argument("--out", default=None, help="output folder (default runs/demo, or runs/demo-quick with --quick)")
    p.add_argument("--seed", type=int, default=None, help="seed of data, model, warm start and RL (default 0)")
    p.add_argument("--config", default=None, help="YAML file of DemoConfig values (e.g. my_demo.yaml)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars or progress lines (the stage results and the summary are still printed)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of DemoConfig fields, e.g. rl_steps=60")
    args = p.parse_args(argv)
    from vitos.config import ConfigError

    try:
        out = args.out or ("runs/demo-quick" if args.quick else None)
        cfg = build_config(args.quick, args.config, args.overrides, args.seed, out)
    except (ConfigError, FileNotFoundError) as err:
        print(f"vitos demo: error: {err}", file=sys.stderr)
        return 2
    summary = run_demo(cfg, quiet=args.quiet)
    print_results(summary)
    print(f"outputs in {cfg.out_dir} ({summary['timings_s']['total_s']:.0f} s)")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json_out, "w") as fh:
            json.dump(summary, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main_demo(sys.argv[1:]))
