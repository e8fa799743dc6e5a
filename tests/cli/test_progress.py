"""The command line's progress display: a tqdm bar on a terminal, plain lines elsewhere, and a
total that can change while it runs (a time-budgeted run learns its length after its first steps)."""

from __future__ import annotations

import sys

import pytest

from gptsmith.cli.train_progress import ProgressPrinter

START = {"parameters": 7_200_000, "device": "cpu", "dtype": "bf16 autocast", "world_size": 1,
         "tokens_per_step": 1024, "accum_steps": 1, "max_steps": 3000, "start_step": 0}
PLAN = {"budget_s": 60.0, "measured_steps": 10, "step_s": 0.1, "eval_s": 1.0, "sample_s": 0.0,
        "checkpoint_s": 0.1, "max_steps": 500, "warmup_steps": 20}


def _step(printer: ProgressPrinter, step: int) -> None:
    printer.on_step({"step": step, "loss": 5.0, "lr": 1e-3, "tokens_seen": step * 1024, "tokens_per_s": 9e3})


@pytest.mark.parametrize("terminal", [True, False])
def test_a_budgeted_run_resizes_the_bar_it_shows(terminal, monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    printer = ProgressPrinter(show_bar=True)
    printer.on_start(START)
    for step in range(1, 11):
        _step(printer, step)
    printer.on_schedule(PLAN)  # was AttributeError: 'Progress' object has no attribute 'refresh'
    shrink = {"at_step": 11, "step_s": 0.2, "max_steps": 480}  # small: the bar says it, no line
    printer.on_schedule({**PLAN, "max_steps": 480, "resized": [shrink]})
    assert printer.bar.total == 480
    for step in range(11, 481):
        _step(printer, step)
    printer.close()
    out, err = capsys.readouterr()
    assert "schedule sized to 500 steps" in out
    if not terminal:  # plain lines: about one per tenth of what was left, ending at the new total
        lines = [line for line in err.splitlines() if line.startswith("step ")]
        assert lines[-1].startswith("step 480/480") and 9 <= len(lines) <= 13
        assert not any("/3,000" in line for line in lines[1:])


def test_a_budget_too_short_to_meet_says_so_and_keeps_its_decimals(capsys):
    printer = ProgressPrinter(show_bar=False)
    printer.on_schedule({**PLAN, "budget_s": 0.5, "spent_s": 1.2, "max_steps": 11})
    printer.on_schedule({**PLAN, "spent_s": 3.0})  # 60 s: room for the 500 steps
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("time budget 0.5 s: 10 steps timed") and first.endswith(
        "; the timed part alone took 1.2 s, so the run ends over its budget (raise --time-budget, or lower "
        "--eval-batches)")
    assert second.startswith("time budget 60 s: ") and "over its budget" not in second


def test_the_command_line_says_a_big_growth_and_lets_the_bar_show_small_changes(capsys):
    printer = ProgressPrinter(show_bar=False)
    printer.on_schedule(PLAN)  # 500 steps
    changes = []
    for at_step, steps in ((110, 530), (120, 600), (300, 590)):  # 6% (quiet), 20% (said), 2% (quiet)
        changes.append({"at_step": at_step, "step_s": 0.08, "max_steps": steps})
        printer.on_schedule({**PLAN, "max_steps": steps, "resized": list(changes)})
    out = capsys.readouterr().out
    assert out.count("ahead of schedule") == 1 and "behind schedule" not in out
    assert "ahead of schedule at step 120 (steps take 0.080 s), so the schedule grows to 600 steps" in out


def test_counts_of_one_are_singular(capsys):
    from gptsmith.cli.train_progress import plural

    assert [plural(n, "step") for n in (0, 1, 2, 1000)] == ["0 steps", "1 step", "2 steps", "1,000 steps"]
    printer = ProgressPrinter(show_bar=False)
    printer.on_schedule({**PLAN, "measured_steps": 1, "max_steps": 1})  # was "1 steps timed", "1 steps"
    out = capsys.readouterr().out
    assert "1 step timed at" in out and "schedule sized to 1 step (" in out
