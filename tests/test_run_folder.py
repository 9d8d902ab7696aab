"""Run folders that protect finished work (issue 17): atomic saves and export under kills at random write
calls, exact resume that finishes an unfinished export, the used-folder matrix, and one clear line (exit 2)
for every damaged checkpoint, damaged model and unwritable output folder."""

from __future__ import annotations

import builtins
import os
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitos.config import load_config
from vitos.rl.checkpoint import final_complete, inspect_run, read_metrics
from vitos.rl.config import TrainConfig
from vitos.rl.trainer import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def phantom_jsonl(tmp_path_factory):
    from vitos.data.medphantom import PhantomConfig, write_dataset

    return write_dataset(PhantomConfig(seed=0, n_train=8, n_test=0), tmp_path_factory.mktemp("phantom"))["train"]


def _overrides(out, model_dir, data, *extra):
    return [f"model.name_or_path={model_dir}", f"data.train_path={data}", f"checkpoint.out_dir={out}",
            "rollout.group_size=2", "rollout.max_new_tokens=8", "data.batch_size=1", "schedule.total_steps=2",
            "schedule.name=joint", "logging.progress=false", "checkpoint.every=1", "optim.lr=0.001",
            "logging.log_grad_cosine=false", *extra]


def _cfg(out, model_dir, data, *extra):
    return load_config(TrainConfig, CONFIG, _overrides(out, model_dir, data, *extra))


def _cli(capsys, *argv):
    from vitos.cli import main

    rc = main(["train", *[str(a) for a in argv]])  # as `vitos train` runs it (library progress bars off)
    out = capsys.readouterr()
    return rc, out.out, out.err


def lower_fraction(text, sample, branch):
    return sum(c.islower() for c in text) / max(1, len(text))


def _killed_after_step(step):
    def hook(s, metrics):
        if s == step:
            raise KeyboardInterrupt(f"killed after step {s}")
    return hook


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _steps(run: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run / "metrics.jsonl")]


# ------------------------------------------------------------------------------ the used-folder matrix


@pytest.fixture(scope="module")
def states(tmp_path_factory, tiny_model_dir, phantom_jsonl):
    """One folder per kind: partial (killed in step 1, before its checkpoint), checkpointed (killed after the
    step-1 checkpoint), finished."""
    root = tmp_path_factory.mktemp("states")
    out = {"empty": root / "empty"}
    partial = root / "partial"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(partial, tiny_model_dir, phantom_jsonl, "checkpoint.every=0"), on_step_end=_killed_after_step(1))
    checkpointed = root / "checkpointed"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(checkpointed, tiny_model_dir, phantom_jsonl), on_step_end=_killed_after_step(1))
    finished = root / "finished"
    train(_cfg(finished, tiny_model_dir, phantom_jsonl))
    out.update(partial=partial, checkpointed=checkpointed, finished=finished)
    return out


def test_the_four_kinds_of_run_folder_are_recognised(states):
    assert {k: inspect_run(v).kind for k, v in states.items()} == {
        "empty": "empty", "partial": "partial", "checkpointed": "checkpointed", "finished": "finished"}
    assert not (states["partial"] / "checkpoints").exists() and _steps(states["partial"]) == [1]


# kind, flag -> (exit status, words the message must hold, whether the folder must be left byte for byte)
MATRIX = {
    ("empty", None): (0, [], False),
    ("empty", "--resume"): (2, ["nothing to resume"], True),
    ("empty", "--overwrite"): (0, [], False),
    ("partial", None): (0, ["killed before its first checkpoint", "starting it over", "metrics.jsonl"], False),
    ("partial", "--resume"): (0, ["killed before its first checkpoint", "no checkpoint to resume"], False),
    ("partial", "--overwrite"): (0, ["--overwrite: removing", "metrics.jsonl"], False),
    ("checkpointed", None): (2, ["already holds an unfinished run", "step-000001", "--resume", "--overwrite"], True),
    ("checkpointed", "--resume"): (0, [], False),
    ("checkpointed", "--overwrite"): (0, ["--overwrite: removing", "checkpoints/"], False),
    ("finished", None): (2, ["already holds a finished run", "--overwrite"], True),
    ("finished", "--resume"): (0, [], True),
    ("finished", "--overwrite"): (0, ["--overwrite: removing", "final/", "checkpoints/"], False),
}


@pytest.mark.parametrize("kind, flag", list(MATRIX))
def test_used_folder_matrix(kind, flag, states, tmp_path, tiny_model_dir, phantom_jsonl, capsys):
    run = tmp_path / "run"
    if states[kind].exists():
        shutil.copytree(states[kind], run)
    before = _snapshot(run) if run.exists() else {}
    argv = ["--config", CONFIG, *_overrides(run, tiny_model_dir, phantom_jsonl, "seed=1")]  # another seed, as in the issue
    if flag == "--resume":  # resume alone: the config comes from the checkpoint / the run's config.yaml
        argv = ["--resume", run] if kind != "empty" else [*argv, "--resume", run]
    elif flag:
        argv.append(flag)
    rc, _, err = _cli(capsys, *argv)
    status, words, untouched = MATRIX[(kind, flag)]
    assert rc == status, err
    for w in words:
        assert w in err, (w, err)
    if rc == 2:
        assert err.count("\n") == 1 and err.startswith("vitos train: error: ")
    after = _snapshot(run) if run.exists() else {}
    if untouched:  # (a resumed run records the folder it is in now: the copy's config.yaml names the copy)
        skip = {"config.yaml"} if flag == "--resume" else set()
        assert {k: v for k, v in after.items() if k not in skip} == {k: v for k, v in before.items() if k not in skip}
    if rc == 0:
        assert _steps(run) == [1, 2] and final_complete(run / "final")  # never 1, 1, 2
        assert inspect_run(run).kind == "finished"


def test_resume_and_overwrite_together_are_refused(states, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(states["finished"], run)
    rc, _, err = _cli(capsys, "--resume", run, "--overwrite")
    assert rc == 2 and "give only one" in err


def test_overwrite_keeps_what_is_not_the_runs_and_says_so(states, tmp_path, tiny_model_dir, phantom_jsonl, capsys):
    run = tmp_path / "run"
    shutil.copytree(states["finished"], run)
    (run / "notes.txt").write_text("mine")
    rc, _, err = _cli(capsys, "--config", CONFIG, *_overrides(run, tiny_model_dir, phantom_jsonl), "--overwrite")
    assert rc == 0 and "keeping 1 other entries: notes.txt" in err
    assert (run / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------ kills at random write calls


class Killer:
    """Raises KeyboardInterrupt at the k-th file write / rename / delete made inside a checkpoint save or the
    final export (k = 0: only count). A killed write leaves what a real kill could: an empty file, half a
    safetensors file, a rename or deletion not done."""

    def __init__(self, monkeypatch, k: int):
        import safetensors.torch

        import vitos.rl.trainer as trainer

        self.k, self.calls, self.active = k, 0, False
        real_open, real_replace, real_rename, real_rmtree = builtins.open, os.replace, os.rename, shutil.rmtree
        real_save_file = safetensors.torch.save_file

        def tick(kind):
            if self.active:
                self.calls += 1
                if self.calls == self.k:
                    raise KeyboardInterrupt(f"killed at write call {self.calls} ({kind})")

        def fake_open(file, mode="r", *a, **kw):
            if self.active and any(c in mode for c in "wax+"):
                try:
                    tick("open")
                except KeyboardInterrupt:
                    real_open(file, mode, *a, **kw).close()  # created, nothing written
                    raise
            return real_open(file, mode, *a, **kw)

        def fake_save_file(tensors, filename, *a, **kw):
            try:
                tick("safetensors")
            except KeyboardInterrupt:
                real_save_file(tensors, filename, *a, **kw)
                with real_open(filename, "r+b") as fh:
                    fh.truncate(os.path.getsize(filename) // 2)  # half written
                raise
            return real_save_file(tensors, filename, *a, **kw)

        def wrap(real, kind):
            def fake(*a, **kw):
                tick(kind)
                return real(*a, **kw)
            return fake

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "replace", wrap(real_replace, "replace"))
        monkeypatch.setattr(os, "rename", wrap(real_rename, "rename"))
        monkeypatch.setattr(shutil, "rmtree", wrap(real_rmtree, "rmtree"))
        for module in list(sys.modules.values()):  # every `from safetensors.torch import save_file as ...`
            for name, value in list(getattr(module, "__dict__", {}).items()):
                if value is real_save_file:
                    monkeypatch.setattr(module, name, fake_save_file)

        def during(real):
            def fn(*a, **kw):
                self.active = True
                try:
                    return real(*a, **kw)
                finally:
                    self.active = False
            return fn

        monkeypatch.setattr(trainer, "save_checkpoint", during(trainer.save_checkpoint))
        monkeypatch.setattr(trainer, "publish_final", during(trainer.publish_final))


KILL_ARGS = ("schedule.name=interleaved", "schedule.total_steps=3", "data.batch_size=2", "model.lora=true",
             "optim.lr=0.01", "checkpoint.keep_last=1")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model_dir, phantom_jsonl):
    run = tmp_path_factory.mktemp("straight") / "run"
    train(_cfg(run, tiny_model_dir, phantom_jsonl, *KILL_ARGS), reward_override=lower_fraction)
    return run


def _write_calls(monkeypatch, tmp_path, tiny_model_dir, phantom_jsonl) -> int:
    with monkeypatch.context() as m:
        killer = Killer(m, 0)
        train(_cfg(tmp_path / "count", tiny_model_dir, phantom_jsonl, *KILL_ARGS), reward_override=lower_fraction)
    return killer.calls


def _kill_then_resume(monkeypatch, run, k, tiny_model_dir, phantom_jsonl, straight):
    cfg = _cfg(run, tiny_model_dir, phantom_jsonl, *KILL_ARGS)
    with monkeypatch.context() as m:
        Killer(m, k)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, reward_override=lower_fraction)
    assert not (run / "final").exists() or final_complete(run / "final"), f"kill {k}: a half final/"
    kind = inspect_run(run).kind
    train(cfg, resume=str(run), reward_override=lower_fraction)  # what the user runs next: --resume
    assert final_complete(run / "final") and _same_weights(run / "final", straight / "final"), f"kill {k} ({kind})"
    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3], f"kill {k}"
    for ra, rb in zip(a, b):
        assert {x: v for x, v in ra.items() if not x.startswith("time/") and x != "rollouts_per_s"} == \
               {x: v for x, v in rb.items() if not x.startswith("time/") and x != "rollouts_per_s"}, f"kill {k}"
    return kind


def test_kills_at_random_moments_of_save_and_export_resume_exactly(monkeypatch, tmp_path, tiny_model_dir,
                                                                   phantom_jsonl, straight):
    n = _write_calls(monkeypatch, tmp_path, tiny_model_dir, phantom_jsonl)
    assert n > 20  # three checkpoint saves and one export: many write calls to kill at
    ks = sorted({1, n, n - 1, *random.Random(17).sample(range(2, n - 1), 4)})  # first, last two (export rename), 4 random
    kinds = {k: _kill_then_resume(monkeypatch, tmp_path / f"k{k}", k, tiny_model_dir, phantom_jsonl, straight) for k in ks}
    assert kinds[1] == "partial" and kinds[n] in ("checkpointed", "finished")


def test_a_kill_during_the_export_leaves_no_final_and_resume_finishes_it(monkeypatch, tmp_path, tiny_model_dir,
                                                                         phantom_jsonl, straight, capsys):
    run = tmp_path / "run"
    cfg = _cfg(run, tiny_model_dir, phantom_jsonl, *KILL_ARGS)
    with monkeypatch.context() as m:  # kill at the rename that publishes .tmp-final/ as final/
        real = os.replace

        def killed_publish(src, dst, *a, **kw):
            if str(dst).endswith(os.sep + "final"):
                raise KeyboardInterrupt("killed while publishing final/")
            return real(src, dst, *a, **kw)

        m.setattr(os, "replace", killed_publish)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, reward_override=lower_fraction)
    assert not (run / "final").exists() and (run / ".tmp-final").is_dir()
    assert inspect_run(run).kind == "checkpointed"  # the last checkpoint is the last step, the export is missing
    rc, _, err = _cli(capsys, "--config", CONFIG, *_overrides(run, tiny_model_dir, phantom_jsonl, *KILL_ARGS))
    assert rc == 2 and "--resume" in err and "finish its export" in err
    train(cfg, resume=str(run), reward_override=lower_fraction)
    assert _same_weights(run / "final", straight / "final") and not (run / ".tmp-final").exists()
    assert _steps(run) == [1, 2, 3]


def test_resume_rewrites_an_empty_or_half_final_left_by_an_older_version(tmp_path, straight, tiny_model_dir,
                                                                        phantom_jsonl):
    for damage in ("empty", "half"):
        run = tmp_path / damage
        shutil.copytree(straight, run)
        if damage == "empty":
            shutil.rmtree(run / "final")
            (run / "final").mkdir()
        else:
            weights = run / "final" / "model.safetensors"
            os.truncate(weights, weights.stat().st_size // 3)
        assert inspect_run(run).kind == "checkpointed"
        train(_cfg(run, tiny_model_dir, phantom_jsonl, *KILL_ARGS), resume=str(run), reward_override=lower_fraction)
        assert _same_weights(run / "final", straight / "final") and _steps(run) == [1, 2, 3]


def test_a_metrics_line_cut_by_a_kill_is_dropped_on_resume(tmp_path, states, tiny_model_dir, phantom_jsonl):
    run = tmp_path / "run"
    shutil.copytree(states["checkpointed"], run)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 2, "grounding/rew')  # the append of step 2 was cut
    train(_cfg(run, tiny_model_dir, phantom_jsonl), resume=str(run))
    assert _steps(run) == [1, 2]


# ------------------------------------------------------------------------------ damaged checkpoints on --resume


def _truncate(f: Path):
    os.truncate(f, f.stat().st_size // 2)


DAMAGE = {
    "truncated model": ("model.safetensors", _truncate),
    "garbage optimizer": ("optimizer.bin", lambda f: f.write_bytes(b"\x80garbage" * 20)),
    "garbage scheduler": ("scheduler.bin", lambda f: f.write_bytes(b"not a pickle")),
    "bad trainer_state": ("trainer_state.json", lambda f: f.write_text('{"step": 1, "posit')),
    "trainer_state without step": ("trainer_state.json", lambda f: f.write_text('{"position": 1}')),
    "missing accelerate RNG": ("random_states_0.pkl", lambda f: f.unlink()),
    "garbage accelerate RNG": ("random_states_0.pkl", lambda f: f.write_bytes(b"\x00" * 10)),
    "missing sampler RNG": ("sampler_rng_0.pt", lambda f: f.unlink()),
    "garbage sampler RNG": ("sampler_rng_0.pt", lambda f: f.write_bytes(b"zzz")),
    "missing optimizer": ("optimizer.bin", lambda f: f.unlink()),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_checkpoint_is_one_line_naming_the_file_and_the_fix(case, states, tmp_path, capsys):
    name, damage = DAMAGE[case]
    run = tmp_path / "run"
    shutil.copytree(states["checkpointed"], run)
    damage(run / "checkpoints" / "step-000001" / name)
    rc, _, err = _cli(capsys, "--resume", run)
    assert rc == 2, err
    assert err.count("\n") == 1 and name in err and ("--overwrite" in err or "earlier checkpoint" in err), err


def test_a_checkpoint_without_its_state_file_is_damage_never_a_restart(states, tmp_path, tiny_model_dir,
                                                                       phantom_jsonl, capsys):
    run = tmp_path / "run"
    shutil.copytree(states["checkpointed"], run)
    (run / "checkpoints" / "step-000001" / "trainer_state.json").unlink()
    before = _snapshot(run)
    assert inspect_run(run).kind == "checkpointed"
    for argv in (["--resume", run], ["--config", CONFIG, *_overrides(run, tiny_model_dir, phantom_jsonl)]):
        rc, _, err = _cli(capsys, *argv)
        assert rc == 2 and "trainer_state.json" in err and "damaged" in err, err
    assert _snapshot(run) == before  # the checkpoint was not deleted by a "restart"


def test_a_damaged_latest_checkpoint_points_at_the_earlier_one(states, tmp_path, tiny_model_dir, phantom_jsonl, capsys):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(run, tiny_model_dir, phantom_jsonl, "schedule.total_steps=3", "checkpoint.keep_last=3"),
              on_step_end=_killed_after_step(2))
    (run / "checkpoints" / "step-000002" / "random_states_0.pkl").unlink()
    rc, _, err = _cli(capsys, "--resume", run)
    assert rc == 2 and "random_states_0.pkl is missing" in err and "step-000001" in err


# ------------------------------------------------------------------------------ damaged models, unwritable outputs


MODEL_DAMAGE = {
    "truncated weights": lambda d: _truncate(d / "model.safetensors"),
    "garbage weights": lambda d: (d / "model.safetensors").write_bytes(b"garbage" * 50),
    "missing weights": lambda d: (d / "model.safetensors").unlink(),
    "bad config.json": lambda d: (d / "config.json").write_text("{not json"),
    "missing config.json": lambda d: (d / "config.json").unlink(),
    "garbage tokenizer": lambda d: (d / "tokenizer.json").write_text("[1, 2"),
    "missing tokenizer_config.json": lambda d: (d / "tokenizer_config.json").unlink(),
}
NAMED = {"truncated weights": "model.safetensors", "garbage weights": "model.safetensors",
         "missing weights": "model.safetensors", "bad config.json": "config.json", "missing config.json": "config.json",
         "garbage tokenizer": "tokenizer.json", "missing tokenizer_config.json": "tokenizer_config.json"}


@pytest.mark.parametrize("case", list(MODEL_DAMAGE))
@pytest.mark.parametrize("command", ["train", "infer"])
def test_a_damaged_model_is_one_line_naming_the_file(case, command, tmp_path, tiny_model_dir, phantom_jsonl, capsys):
    from conftest import random_image

    from vitos.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    MODEL_DAMAGE[case](model)
    if command == "train":
        rc = main(["train", "--config", str(CONFIG), *_overrides(tmp_path / "run", model, phantom_jsonl)])
    else:
        random_image(32, 32).save(tmp_path / "scan.png")
        rc = main(["infer", "--model", str(model), "--image", str(tmp_path / "scan.png"), "--question", "x?",
                   "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "2", "--quiet"])
    err = capsys.readouterr().err  # --quiet: no progress line, so stderr is exactly the error
    assert rc == 2 and err.count("\n") == 1 and NAMED[case] in err and str(model) in err, err
    assert "Traceback" not in err


def test_an_output_folder_that_is_a_file_or_read_only_is_one_line(tmp_path, tiny_model_dir, phantom_jsonl, capsys,
                                                                   monkeypatch):
    import tempfile

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for out in (blocker, blocker / "run"):
        rc, _, err = _cli(capsys, "--config", CONFIG, *_overrides(out, tiny_model_dir, phantom_jsonl))
        assert rc == 2 and err.count("\n") == 1 and "is a file" in err and str(blocker) in err, err
    assert blocker.read_text() == "x"

    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.mkstemp

    def read_only(*a, dir=None, **kw):  # what a read-only folder does to a write (root ignores chmod)
        if dir is not None and Path(dir) == locked:
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    rc, _, err = _cli(capsys, "--config", CONFIG, *_overrides(locked / "run", tiny_model_dir, phantom_jsonl))
    assert rc == 2 and err.count("\n") == 1 and "not writable" in err and str(locked) in err, err


def test_a_write_that_fails_mid_run_is_one_line_naming_the_file(tmp_path, tiny_model_dir, phantom_jsonl, capsys,
                                                               monkeypatch):
    import vitos.rl.trainer as trainer

    def no_space(*a, **kw):
        raise OSError(28, "No space left on device", str(tmp_path / "run" / "checkpoints"))

    monkeypatch.setattr(trainer, "save_checkpoint", no_space)
    rc, _, err = _cli(capsys, "--config", CONFIG, *_overrides(tmp_path / "run", tiny_model_dir, phantom_jsonl))
    assert rc == 2 and err.count("\n") == 1 and "No space left on device" in err and "checkpoints" in err
