"""--time-budget: the schedule (warm-up + cosine decay) is sized from measured step times so the run
ends, decay completed, within the budget; run.json records it and a resumed run keeps it.

How the clock is kept after sizing (bursts, slowdowns) is tested on a simulated clock, with tight
bounds, in test_time_budget_clock.py; the wall-clock tests here check the real trainer end to end."""

from __future__ import annotations

import json
import time

import pytest
from training_helpers import make_trainer, tiny_config, train_args, write_cli_inputs

from gptsmith.cli import main
from gptsmith.errors import ConfigError
from gptsmith.train.callbacks import TrainCallbacks
from gptsmith.train.config import parse_duration
from gptsmith.train.schedule import lr_at_step
from gptsmith.train.time_budget import MARGIN, size_schedule


@pytest.mark.parametrize(("text", "seconds"), [(600, 600.0), ("600", 600.0), ("90s", 90.0), ("10m", 600.0),
                                               ("1.5h", 5400.0), (" 2M ", 120.0),
                                               # common spellings that were refused
                                               ("1h30m", 5400.0), ("1m 30s", 90.0), ("2min", 120.0),
                                               ("45 sec", 45.0), ("2 hours", 7200.0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10x", "", "-5m", "0", "m", True, "1m2m", "1h30", "inf", "1h-30m"])
def test_bad_durations_are_config_errors(bad):
    with pytest.raises(ConfigError, match="--time-budget"):
        parse_duration(bad)


def test_size_schedule_fits_steps_evals_samples_and_checkpoints():
    common = dict(step_s=1.0, eval_s=5.0, sample_s=2.0, checkpoint_s=3.0, eval_every=10, sample_every=None,
                  checkpoint_every=None)
    # From step 0: n steps + ceil(n/10) x (eval + sample + checkpoint) = n + 1 s per step... in 100 s.
    n = size_schedule(remaining_s=100.0, done_steps=0, **common)
    assert n == 50  # 50 steps + 5 x 10 s = 100 s; 51 steps would need a sixth evaluation
    assert size_schedule(remaining_s=100.0, done_steps=10, **common) == 60
    assert size_schedule(remaining_s=0.0, done_steps=10, **common) == 11  # never less than one more step
    only_at_end = dict(common, eval_every=0, sample_every=0, checkpoint_every=0)
    assert size_schedule(remaining_s=100.0, done_steps=0, **only_at_end) == 92  # 92 + 5 + 3 = 100


class Recorder(TrainCallbacks):
    """Records the plans (the sizing, then any shrink: a busy machine may shrink a short run) and lrs."""

    def __init__(self, stop_trainer=None, slow_after_plan_s=0.0):
        self.plans, self.lrs, self.stop_trainer = [], [], stop_trainer
        self.slow_after_plan_s = slow_after_plan_s

    def on_schedule(self, info):
        self.plans.append(info)
        if self.stop_trainer is not None:
            self.stop_trainer.request_stop()  # stops (with a checkpoint) after this step

    def on_step(self, info):
        self.lrs.append(info["lr"])
        if self.plans and self.slow_after_plan_s:
            time.sleep(self.slow_after_plan_s)  # the machine got busy after the schedule was sized


def test_a_budget_sizes_the_schedule_and_the_decay_completes(tmp_path):
    cfg = tiny_config(time_budget="3s", max_steps=5, warmup_steps=3, eval_every=50, eval_batches=1)
    recorder = Recorder()
    trainer = make_trainer(tmp_path / "run", cfg, callbacks=recorder)
    result = trainer.fit()
    plan = recorder.plans[0]
    # Sized from what was measured (how many steps fit depends on the machine's load, not the 5 asked).
    # (run.json keeps the costs to the microsecond, so a recount may differ by one step)
    assert abs(plan["max_steps"] - size_schedule(
        remaining_s=plan["budget_s"] - plan["spent_s"] - MARGIN * plan["budget_s"],
        done_steps=plan["measured_steps"], step_s=plan["step_s"], eval_s=plan["eval_s"],
        sample_s=plan["sample_s"], checkpoint_s=plan["checkpoint_s"], eval_every=50, sample_every=None,
        checkpoint_every=None)) <= 1
    final = recorder.plans[-1]  # the same plan unless the steps got slower or faster and it resized
    assert result.stopped == "max_steps" and result.step == final["max_steps"] == trainer.cfg.max_steps
    assert plan["step_s"] > 0 and plan["eval_s"] > 0 and plan["checkpoint_s"] > 0
    # The lr of the last step is the end of the cosine: the decay completed.
    floor, peak = cfg.floor_lr, cfg.lr
    assert recorder.lrs[-1] == pytest.approx(lr_at_step(result.step - 1, peak_lr=peak, min_lr=floor,
                                                        warmup_steps=final["warmup_steps"],
                                                        max_steps=result.step))
    if result.step > 10:
        assert recorder.lrs[-1] < floor + 0.05 * (peak - floor)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["train"]["time_budget"] == "3s" and run["train"]["max_steps"] == result.step
    assert run["time_budget"]["max_steps"] == result.step and run["time_budget"]["budget_s"] == 3.0


def test_a_resumed_budget_run_keeps_its_schedule(tmp_path):
    cfg = tiny_config(time_budget="4s", max_steps=5, warmup_steps=2, eval_every=0, checkpoint_every=0,
                      eval_batches=1)
    recorder = Recorder()
    first = make_trainer(tmp_path / "run", cfg, callbacks=recorder)
    recorder.stop_trainer = first
    stopped = first.fit()
    plan = recorder.plans[0]  # the first call stops the run: nothing is trained after it
    if plan["max_steps"] == stopped.step:
        pytest.skip("the machine was too slow for any step after the timed ones")
    assert stopped.stopped == "interrupted" and stopped.step == plan["measured_steps"]
    again = Recorder()
    second = make_trainer(tmp_path / "run", cfg, callbacks=again)
    second.resume()
    result = second.fit()
    assert not again.plans  # not sized again
    assert result.step == plan["max_steps"] and second.cfg.warmup_steps == plan["warmup_steps"]


def test_time_budget_from_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    corpus, config = write_cli_inputs(tmp_path)
    run = tmp_path / "run"
    with_progress = [a for a in train_args(corpus, config, run, "--time-budget", "2s", "--eval-every", "0")
                     if a != "--no-progress"]  # (the progress display resizes: it crashed before)
    assert main(with_progress) == 0
    out = capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    steps = info["time_budget"]["max_steps"]
    assert "schedule sized to" in out and f"done: {steps:,} steps" in out
    if not info["time_budget"].get("resized"):  # (a busy machine may have slowed the steps down)
        assert f"schedule sized to {steps:,} steps" in out
    # --max-steps on resume replaces the sized schedule: the run goes on to it (it trained 0 steps)
    assert main(["train", "--resume", str(run), "--max-steps", str(steps + 3), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"--max-steps {steps + 3} replaces the {steps} steps" in out
    assert f"done: {steps + 3:,} steps" in out
    assert main(train_args(corpus, config, tmp_path / "x", "--time-budget", "2s", "--max-steps", "9")) == 2
    assert "--max-steps or --time-budget, not both" in capsys.readouterr().err
    assert main(train_args(corpus, config, tmp_path / "y", "--time-budget", "ten")) == 2
    assert "--time-budget must be a duration" in capsys.readouterr().err


def test_a_run_whose_steps_get_slower_shrinks_its_schedule_and_still_ends_in_time(tmp_path):
    cfg = tiny_config(time_budget="3s", max_steps=5, warmup_steps=2, eval_every=0, checkpoint_every=0,
                      eval_batches=1)
    recorder = Recorder(slow_after_plan_s=0.05)  # after sizing, 50 ms more per step
    trainer = make_trainer(tmp_path / "run", cfg, callbacks=recorder)
    started = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - started
    sized, final = recorder.plans[0], recorder.plans[-1]
    if sized["max_steps"] * 0.05 < 0.5:
        pytest.skip("the machine was too slow: too few steps fitted for a slowdown to matter")
    assert len(recorder.plans) >= 2 and final["max_steps"] < sized["max_steps"]
    assert result.step == final["max_steps"] == trainer.cfg.max_steps
    # The budget, give or take slow steps and the final evaluation on a busy machine: well short of
    # the unshrunk schedule, whose 50 ms more per step would have added sized * 0.05 s.
    assert wall < 3.0 + max(1.0, 0.5 * sized["max_steps"] * 0.05)
    # The decay still completes: the last lr is the end of the cosine of the new schedule.
    assert recorder.lrs[-1] == pytest.approx(lr_at_step(result.step - 1, peak_lr=cfg.lr, min_lr=cfg.floor_lr,
                                                        warmup_steps=final["warmup_steps"],
                                                        max_steps=result.step))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["time_budget"]["max_steps"] == result.step == run["train"]["max_steps"]
    assert run["time_budget"]["resized"][-1]["max_steps"] == result.step


def test_the_command_line_says_a_big_shrink_and_lets_the_bar_show_small_ones(capsys):
    from gptsmith.cli.train_progress import ProgressPrinter

    printer = ProgressPrinter(show_bar=False)
    plan = {"budget_s": 60.0, "measured_steps": 10, "step_s": 0.1, "eval_s": 1.0, "sample_s": 0.0,
            "checkpoint_s": 0.1, "max_steps": 500, "warmup_steps": 20}
    printer.on_schedule(plan)
    shrinks = []
    for at_step, steps in ((100, 480), (150, 300), (200, 290)):  # 4% (quiet), 38% (said), 3% (quiet)
        shrinks.append({"at_step": at_step, "step_s": 0.2, "max_steps": steps})
        printer.on_schedule({**plan, "max_steps": steps, "resized": list(shrinks)})
    out = capsys.readouterr().out
    assert "schedule sized to 500 steps" in out
    assert out.count("behind schedule") == 1
    assert "behind schedule at step 150 (steps take 0.200 s), so the schedule shrinks to 300 steps" in out
