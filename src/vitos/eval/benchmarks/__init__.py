"""The seven benchmarks of the paper, one small module each, behind one registry.

    from vitos.eval.benchmarks import BENCHMARKS
    bench = BENCHMARKS["slake"]
    samples = bench.load("/data/SLAKE", split="test", limit=100)
    prompts = [bench.prompt(s) for s in samples]

Every entry follows `base.Benchmark`: `name`, `hub_id`, `load(data_dir=None, split="test", limit=None)`
and `prompt(sample)`. Loading never touches the network unless `data_dir` is None.
"""

from __future__ import annotations

from vitos.eval.benchmarks.base import Benchmark, MalformedDataError, format_prompt
from vitos.eval.benchmarks.medxpertqa import MedXpertQA
from vitos.eval.benchmarks.mmmu_med import MMMUMed
from vitos.eval.benchmarks.omnimedvqa import OmniMedVQA
from vitos.eval.benchmarks.pathvqa import PathVQA
from vitos.eval.benchmarks.pmc_vqa import PMCVQA
from vitos.eval.benchmarks.slake import Slake
from vitos.eval.benchmarks.vqa_rad import VQARad

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b for b in (VQARad(), Slake(), PathVQA(), PMCVQA(), OmniMedVQA(), MMMUMed(), MedXpertQA())
}
"""name -> benchmark, in the order of REFERENCE.md section 3 (SLAKE: English rows; Slake(None) for all)."""


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark `name`, or a KeyError listing the known names."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}") from None


__all__ = ["BENCHMARKS", "Benchmark", "MalformedDataError", "format_prompt", "get_benchmark"]
