"""The warm start (vitos.sft) on a real tiny Qwen2.5-VL: what each stage trains, and that it learns.

Each test runs a handful of optimizer steps on 2-4 MedPhantom samples (seconds on a CPU).
"""

from __future__ import annotations

import io
import math
import re

import pytest
import torch

from vitos.data.medphantom import PhantomConfig, generate
from vitos.data.sample import Sample
from vitos.pipeline import PruneConfig
from vitos.sft import (
    SFTConfig,
    StageProgress,
    VisionPretrainConfig,
    pretrain_vision,
    targets,
    token_boxes,
    warm_start,
    where_target,
)


@pytest.fixture()
def adapter(tiny_model_dir):
    """A fresh copy per test: these tests train the weights."""
    from vitos.models import load_model

    torch.manual_seed(0)
    return load_model(tiny_model_dir, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def phantom():
    return generate(PhantomConfig(seed=0, n_train=4, n_test=1, image_size=112))["train"]


def _snapshot(model, vision: bool) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ("visual." in n) == vision}


def _max_change(model, before: dict[str, torch.Tensor]) -> float:
    params = dict(model.named_parameters())
    return max(float((params[n].detach() - p).abs().max()) for n, p in before.items())


def test_where_target_is_the_box_block_of_the_grounding_target():
    s = Sample(id="a", images=[], question="q", answer="no", kind="yes_no", boxes=[[0.1, 0.2, 0.333, 0.5]])
    assert where_target(s) == "<box>[[0.10,0.20,0.33,0.50]]</box>"
    assert where_target(s) in targets(s, "none")[0]  # the same box text the grounding branch is taught


def test_token_boxes_give_each_evidence_token_its_box_and_nan_elsewhere():
    s = Sample(id="a", images=[], question="q", answer="no", kind="yes_no", boxes=[[0.0, 0.0, 0.5, 0.5]])
    out = token_boxes(s, (2, 2))  # 4 cells; the box covers the upper-left one only
    assert out.shape == (4, 4)
    assert out[0].tolist() == [0.0, 0.0, 0.5, 0.5]
    assert torch.isnan(out[1:]).all()


def test_sequences_are_validated():
    with pytest.raises(ValueError, match="sequences"):
        SFTConfig(sequences=("grounding", "caption"))


def test_warm_start_fits_a_fixed_batch_and_leaves_a_frozen_tower_untouched(adapter, phantom):
    vision = _snapshot(adapter.model, vision=True)
    lm = _snapshot(adapter.model, vision=False)
    cfg = SFTConfig(steps=12, batch_size=2, lr=3e-3, warmup_steps=1, freeze_vision=True,
                    sequences=("grounding", "sparse", "full", "where"))
    losses = warm_start(adapter, phantom[:2], cfg, PruneConfig(min_keep=1))
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3  # the same two samples every step: it must fit
    assert _max_change(adapter.model, vision) == 0.0  # frozen
    assert _max_change(adapter.model, lm) > 0.0


def test_vision_pretraining_trains_the_tower_only_and_lowers_its_loss(adapter, phantom):
    vision = _snapshot(adapter.model, vision=True)
    lm = _snapshot(adapter.model, vision=False)
    losses = pretrain_vision(adapter, phantom, VisionPretrainConfig(steps=15, batch_size=4, lr=3e-3, box_weight=10.0))
    assert len(losses) == 15 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    assert _max_change(adapter.model, vision) > 0.0
    assert _max_change(adapter.model, lm) == 0.0  # the language model is not touched


# ------------------------------------------------------------------------------------------- progress

_LINE = re.compile(r"^\[progress\] (?P<desc>.+): step (?P<n>\d+)/(?P<total>\d+) \(\d+%\), [\d.]+ step/s, "
                   r"elapsed \d+ s, ETA \d+ s(?P<stats>(, \w+=\S+)*)$")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_in_a_log_is_plain_parseable_lines_every_tenth_and_at_the_end():
    log = io.StringIO()  # not a terminal: no bar redraws
    with StageProgress(25, "warm start (read)", stream=log) as bar:
        for step in range(25):
            bar.update(loss=1.0 / (step + 1))
    lines = log.getvalue().splitlines()
    assert lines[0] == "[progress] warm start (read): started, 25 steps"
    parsed = [_LINE.match(line) for line in lines[1:]]
    assert all(parsed), lines
    assert [int(m["n"]) for m in parsed] == [3, 6, 9, 12, 15, 18, 21, 24, 25]  # every ceil(25 / 10), then the last
    assert parsed[-1]["stats"] == ", loss=0.040" and "\r" not in log.getvalue()


def test_progress_on_a_terminal_is_a_tqdm_bar_with_rate_and_eta_and_disabled_prints_nothing():
    tty = _Terminal()
    with StageProgress(4, "vision pre-training", stream=tty) as bar:
        for _ in range(4):
            bar.update(loss=0.5)
    text = tty.getvalue()
    assert "vision pre-training" in text and "4/4" in text and "step/s" in text and "loss=0.500" in text
    assert "[progress]" not in text
    quiet = _Terminal()
    with StageProgress(4, "x", enabled=False, stream=quiet) as bar:
        bar.update()
    assert quiet.getvalue() == ""


def test_a_zero_width_pseudo_terminal_gets_plain_lines_and_a_wide_one_the_bar():
    import fcntl
    import os
    import pty
    import struct
    import termios

    for columns, bar in ((0, False), (100, True)):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        with os.fdopen(slave, "w") as stream:
            with StageProgress(2, "x", stream=stream) as progress:
                assert (progress.bar is not None) == bar
                progress.update()
                progress.update()
        chunks = []  # the slave is closed: read everything it wrote (a single read may return part of it)
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: nothing left once the slave side is closed
                break
            if not data:
                break
            chunks.append(data)
        written = b"".join(chunks).decode()
        os.close(master)
        assert ("[progress] x: step 2/2" in written) == (not bar) and ("2/2 [" in written) == bar, written


def test_warm_start_loops_report_progress_only_when_asked(adapter, phantom, capsys):
    log = io.StringIO()
    pretrain_vision(adapter, phantom, VisionPretrainConfig(steps=2, batch_size=2),
                    progress=StageProgress(2, "vision pre-training", stream=log, every=1))
    warm_start(adapter, phantom[:2], SFTConfig(steps=2, batch_size=2, sequences=("where",), freeze_vision=True),
               progress=StageProgress(2, "warm start", stream=log, every=1))
    steps = [m for m in map(_LINE.match, log.getvalue().splitlines()) if m]
    assert [(m["desc"], m["n"]) for m in steps] == [("vision pre-training", "1"), ("vision pre-training", "2"),
                                                    ("warm start", "1"), ("warm start", "2")]
    assert all(m["stats"].startswith(", loss=") for m in steps)
    warm_start(adapter, phantom[:2], SFTConfig(steps=1, batch_size=2, sequences=("where",)))  # default: silent
    assert capsys.readouterr().err == ""
