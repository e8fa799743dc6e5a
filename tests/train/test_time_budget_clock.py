"""``BudgetWatch`` on a simulated clock: steps of a fixed, known cost, so the bounds can be tight.

The wall-clock tests in test_time_budget.py run a real trainer, whose ~4 ms steps jitter on a
shared machine; here every second is accounted for, so a regression of a few percent shows.
"""

from __future__ import annotations

import pytest
import torch

from gptsmith.train import time_budget
from gptsmith.train.config import TrainConfig
from gptsmith.train.distributed import DistContext
from gptsmith.train.time_budget import EARLY_MARGIN, MARGIN, RECENT_STEPS, BudgetWatch

BUDGET_S = 600.0
EVAL_S = 2.0  # one evaluation (the baseline before step 1, and the final one)
CHECKPOINT_S = 0.5


class Clock:
    """Stands in for the ``time`` module inside ``time_budget``."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class SimTrainer:
    """What ``BudgetWatch`` uses of a ``Trainer``: no model, no files, one process."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, self.step, self.run_info, self.plans = cfg, 0, {}, []
        self.dist, self.device = DistContext(), torch.device("cpu")
        self.tokenizer = self.run_dir = self.model = self.optimizer = None
        self.callbacks = self

    def on_schedule(self, plan: dict) -> None:
        self.plans.append(plan)


def simulate(monkeypatch, step_cost) -> tuple[SimTrainer, float]:
    """Run a budgeted schedule whose step ``n`` (counted from the sizing, negative before it)
    costs ``step_cost(n)`` seconds; returns the trainer and the time the run ended."""
    clock = Clock()
    monkeypatch.setattr(time_budget, "time", clock)
    monkeypatch.setattr(time_budget, "checkpoint_seconds", lambda model, optimizer: CHECKPOINT_S)
    cfg = TrainConfig(time_budget=BUDGET_S, warmup_steps=20, eval_every=0, checkpoint_every=0, sample_every=0)
    trainer = SimTrainer(cfg)
    watch = BudgetWatch(BUDGET_S, clock.now)
    clock.now += EVAL_S  # the untrained model's evaluation
    sized_at = None
    while trainer.step < trainer.cfg.max_steps:
        cost = step_cost(trainer.step - sized_at if sized_at is not None else -1)
        clock.now += cost
        trainer.step += 1
        watch.after_step(trainer, cost, EVAL_S)
        if sized_at is None and trainer.plans:
            sized_at = trainer.step
    return trainer, clock.now + EVAL_S + CHECKPOINT_S  # the final evaluation and checkpoint


def test_a_steady_run_is_sized_once_and_ends_near_the_budget(monkeypatch):
    trainer, ended = simulate(monkeypatch, lambda n: 0.1)
    assert len(trainer.plans) == 1  # never shrunk
    sized = trainer.plans[0]["max_steps"]
    assert trainer.step == sized == trainer.cfg.max_steps
    assert (1 - MARGIN) * BUDGET_S - 1.0 <= ended <= BUDGET_S  # the reserve is all that is left


def test_a_burst_of_slow_steps_costs_the_run_its_own_time_and_no_more(monkeypatch):
    # 25 steps of 1 s right after sizing: 22.5 s more than planned, i.e. 225 steps of 0.1 s.
    trainer, ended = simulate(monkeypatch, lambda n: 1.0 if 0 <= n < 25 else 0.1)
    sized = trainer.plans[0]["max_steps"]
    assert ended <= BUDGET_S
    # A burst read as the pace of the whole rest would keep about a tenth of the schedule.
    assert trainer.step >= sized - 225 * 1.1


def test_a_run_that_slows_down_for_good_shrinks_and_still_ends_in_time(monkeypatch):
    trainer, ended = simulate(monkeypatch, lambda n: 0.1 if n < 0 else 0.2)  # half the speed after sizing
    sized = trainer.plans[0]["max_steps"]
    assert len(trainer.plans) >= 2 and trainer.step < sized
    assert trainer.plans[-1]["sized_max_steps"] == sized
    assert 0.85 * BUDGET_S <= ended <= BUDGET_S  # late, so shrunk, but not cut far short
    assert trainer.cfg.warmup_steps <= trainer.step


def test_a_run_whose_steps_get_faster_grows_and_fills_its_budget(monkeypatch):
    # The probe's steps are slow (cold caches, a CPU clocking up), the rest 20% faster: sized from
    # the probe, the run would end ~15% early (it did on a 2-core EPYC, 11% of 10 minutes unused).
    trainer, ended = simulate(monkeypatch, lambda n: 0.12 if n < 0 else 0.1)
    sized = trainer.plans[0]["max_steps"]
    assert len(trainer.plans) == 2  # grown once, at the first measured pace, then steady
    grown = trainer.plans[-1]["resized"][0]
    assert grown["max_steps"] > sized
    assert grown["at_step"] >= trainer.plans[0]["measured_steps"] + RECENT_STEPS  # at a measured pace
    assert trainer.plans[-1]["sized_max_steps"] == sized
    assert trainer.step == grown["max_steps"] == trainer.cfg.max_steps
    assert (1 - MARGIN) * BUDGET_S - 1.0 <= ended <= BUDGET_S
    assert trainer.cfg.warmup_steps == 20  # the warm-up is not touched


def test_a_run_a_little_faster_than_sized_keeps_its_schedule(monkeypatch):
    # Ending up to EARLY_MARGIN early is within the reserve's dead band: no resize back and forth.
    faster = 1 - (EARLY_MARGIN - MARGIN) / 2  # ends between MARGIN and EARLY_MARGIN unused
    trainer, ended = simulate(monkeypatch, lambda n: 0.1 if n < 0 else 0.1 * faster)
    assert len(trainer.plans) == 1
    assert ended <= (1 - MARGIN) * BUDGET_S


@pytest.mark.parametrize("step_s", [0.01, 0.5, 5.0])
def test_the_sizing_fits_steps_of_any_cost(monkeypatch, step_s):
    trainer, ended = simulate(monkeypatch, lambda n: step_s)
    assert ended <= BUDGET_S and len(trainer.plans) == 1
    assert ended >= (1 - MARGIN) * BUDGET_S - 2 * step_s
