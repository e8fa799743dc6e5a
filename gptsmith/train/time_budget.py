"""Training for a wall-clock budget: ``TrainConfig(time_budget="10m")``, ``train --time-budget 10m``.

A schedule is sized in steps (warm-up, then a cosine decay that reaches its floor at
``max_steps``), so "train for ten minutes" means choosing ``max_steps``. The ``Trainer`` does it
once, at the start of a new run:

1. the clock starts when training starts; the untrained baseline evaluation is timed;
2. the first steps are timed (``PROBE_STEPS``, fewer when they would take over a tenth of the
   budget), each from the end of the step before, so the callbacks and logging count; they run
   with the configured warm-up, which does not depend on ``max_steps``;
3. one sample and one checkpoint's serialisation are timed (nothing is written);
4. ``size_schedule`` picks the largest ``max_steps`` whose remaining steps, evaluations, samples
   and checkpoints (at the steps the config puts them, the final ones included) fit in what is
   left of the budget, less a safety margin. The run then trains exactly that schedule, so its
   decay completes inside the budget;
5. after every step (every ``RECHECK_EVERY`` steps when distributed) the rest of the schedule
   is checked against the clock, at the pace measured when sizing or, once ``RECENT_STEPS`` steps
   are timed since, at their median. When the machine got slower (another job started, the
   laptop throttled) and the rest would no longer fit, ``max_steps`` shrinks to what does. When
   the steps got faster than the first ones (caches, the allocator and the CPU's clock settle
   after the probe: on a 2-core EPYC a 10-minute run sized from its first steps ended 11% early),
   so that the run would end with more than ``EARLY_MARGIN`` of the budget unused, ``max_steps``
   grows to fill it. Either way the new ``max_steps`` leaves the full ``MARGIN`` in reserve, so a
   steady pace settles after one change. A short burst of slow steps costs the run only the time
   it took (the clock sees it; the pace does not).
   The cosine then reaches its floor at the new last step: the learning rate steps down once (a
   shrink) or up a little (a growth, from a later point of a longer cosine), and the decay
   completes inside the budget either way.

The chosen figures go into run.json (``time_budget``; a resize adds ``resized`` and
``sized_max_steps``) and the train config's ``max_steps``; a resumed run reads them back and keeps
the schedule (it is never sized again, and its clock is not checked: the budget belonged to the
first run).
"""

from __future__ import annotations

import io
import json
import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gptsmith.train.distributed import all_reduce_mean, all_reduce_min, any_rank

PROBE_STEPS = 10  # steps timed before sizing (the first one, which warms caches up, is not counted)
# Every step re-checks the rest against the clock (5. above), so the reserves can be
# small: with 5% / 2% / 8% a 10-minute recipe run ended with 4-7% of its budget unused.
MARGIN = 0.03  # fraction of the budget kept in reserve against slower steps later on
LATE_MARGIN = 0.01  # the reserve when re-checking (less than MARGIN: a run on time never shrinks)
EARLY_MARGIN = 0.05  # a run that would leave more than this unused grows (above MARGIN: nor does one on time)
RECENT_STEPS = 100  # step times whose median becomes the pace (a burst of slow steps is not a trend)
RECHECK_EVERY = 10  # steps between re-checks when distributed (each one is a collective)


@dataclass
class BudgetPlan:
    """What the budget bought: the measured costs and the schedule sized from them (run.json)."""

    budget_s: float
    measured_steps: int  # steps timed before sizing
    step_s: float  # median seconds per optimizer step
    eval_s: float  # one evaluation (both splits, plus the loss plot)
    sample_s: float  # one sample continuation
    checkpoint_s: float  # one checkpoint, estimated from serialising its state
    spent_s: float  # budget already used when the schedule was sized
    max_steps: int
    warmup_steps: int

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _events(done: int, total: int, every: int) -> int:
    """How many of the steps done+1..total are multiples of ``every``, plus the last step if it is not."""
    if every <= 0:
        return 1
    multiples = total // every - done // every
    return multiples + (0 if total % every == 0 else 1)


def size_schedule(
    *,
    remaining_s: float,
    done_steps: int,
    step_s: float,
    eval_s: float,
    sample_s: float,
    checkpoint_s: float,
    eval_every: int,
    sample_every: int | None,
    checkpoint_every: int | None,
) -> int:
    """The largest ``max_steps`` (> ``done_steps``) whose remaining work fits in ``remaining_s``.

    ``eval_every``/``sample_every``/``checkpoint_every`` as in ``TrainConfig`` (0 = only at the
    end; ``None`` = at every evaluation). Never less than ``done_steps + 1``.
    """
    def cost(total: int) -> float:
        eval_interval = eval_every or total
        sample_interval = eval_interval if sample_every is None else sample_every
        ckpt_interval = eval_interval if checkpoint_every is None else (checkpoint_every or total)
        seconds = (total - done_steps) * step_s + _events(done_steps, total, eval_interval) * eval_s
        if sample_interval:
            seconds += _events(done_steps, total, sample_interval) * sample_s
        return seconds + _events(done_steps, total, ckpt_interval) * checkpoint_s

    low, high = done_steps + 1, done_steps + 2
    while cost(high) <= remaining_s and high < 10**9:
        low, high = high, high * 2
    while high - low > 1:  # cost(low) fits (or low is the minimum), cost(high) does not
        middle = (low + high) // 2
        low, high = (middle, high) if cost(middle) <= remaining_s else (low, middle)
    return low


def checkpoint_seconds(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """Seconds to serialise a checkpoint's weights and optimizer state (in memory; nothing written),
    with room for the disk: x1.5 + 50 ms."""
    started = time.perf_counter()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, io.BytesIO())
    return 1.5 * (time.perf_counter() - started) + 0.05


def plan_budget(
    cfg: Any,
    *,
    budget_s: float,
    elapsed_s: float,
    step_times: list[float],
    done_steps: int,
    eval_s: float,
    sample_s: float,
    checkpoint_s: float,
) -> BudgetPlan:
    """Size the schedule of ``cfg`` (a ``TrainConfig``) from the costs measured so far."""
    step_s = statistics.median(step_times[1:] or step_times)
    max_steps = size_schedule(
        remaining_s=(budget_s - elapsed_s) - MARGIN * budget_s, done_steps=done_steps, step_s=step_s,
        eval_s=eval_s, sample_s=sample_s, checkpoint_s=checkpoint_s, eval_every=cfg.eval_every,
        sample_every=cfg.sample_every, checkpoint_every=cfg.checkpoint_every,
    )
    warmup = warmup_within(cfg.warmup_steps, done_steps, max_steps)
    return BudgetPlan(budget_s=budget_s, measured_steps=len(step_times), step_s=step_s, eval_s=eval_s,
                      sample_s=sample_s, checkpoint_s=checkpoint_s, spent_s=elapsed_s,
                      max_steps=max_steps, warmup_steps=warmup)


def warmup_within(warmup_steps: int, done_steps: int, max_steps: int) -> int:
    """``warmup_steps``, or when it would take the whole run, a tenth of it (never before
    ``done_steps``): a sized or shrunk schedule keeps a decay to complete."""
    return warmup_steps if warmup_steps < max_steps else max(done_steps, max_steps // 10)


def apply_plan(trainer: Any, plan: dict[str, Any]) -> None:
    """Make ``plan`` (a ``BudgetPlan.to_dict()``, maybe with shrinks) the trainer's schedule: its
    config, run.json and, on the main process, ``on_schedule``."""
    trainer.cfg = trainer.cfg.replace(max_steps=plan["max_steps"], warmup_steps=plan["warmup_steps"])
    trainer.run_info["time_budget"] = plan
    if trainer.dist.is_main:
        if trainer.run_dir is not None:
            trainer._write_run_info()
        trainer.callbacks.on_schedule(dict(plan))


def probe_done(step_times: list[float], budget_s: float) -> bool:
    """Whether enough steps are timed: ``PROBE_STEPS``, or 3 or more once they took a tenth of the budget."""
    return len(step_times) >= PROBE_STEPS or (len(step_times) >= 3 and sum(step_times) >= 0.1 * budget_s)


def recorded_plan(run_file: Path) -> dict[str, Any] | None:
    """The plan a budgeted run recorded in its run.json (None without one)."""
    return json.loads(run_file.read_text()).get("time_budget") if run_file.is_file() else None


def size_trainer(trainer: Any, budget_s: float, elapsed_s: float, step_times: list, eval_s: float) -> None:
    """Fix a ``Trainer``'s ``max_steps`` (and, if it must shrink, its warm-up) so its run ends within
    the budget; the plan goes into run.json, every later checkpoint and ``on_schedule``."""
    started = time.perf_counter()
    if trainer.tokenizer is not None and trainer.cfg.sample_every != 0:
        trainer._sample_text()
    sample_s = time.perf_counter() - started
    plan = plan_budget(trainer.cfg, budget_s=budget_s, elapsed_s=elapsed_s + sample_s, step_times=step_times,
                       done_steps=trainer.step, eval_s=eval_s, sample_s=sample_s,
                       checkpoint_s=checkpoint_seconds(trainer.model, trainer.optimizer))
    # Every process takes the same schedule (their timings differ a little).
    agreed = all_reduce_mean(torch.tensor([plan.max_steps, plan.warmup_steps], dtype=torch.float64,
                                          device=trainer.device), trainer.dist).tolist()
    plan.max_steps, plan.warmup_steps = int(agreed[0]), int(agreed[1])
    apply_plan(trainer, plan.to_dict())


class BudgetWatch:
    """The clock of a budgeted run: times the first steps, sizes the schedule, then keeps it in time.

    ``after_step`` is the ``Trainer``'s one call, after each optimizer step.
    """

    def __init__(self, budget_s: float, started: float) -> None:
        self.budget_s = budget_s
        self.deadline = started + budget_s
        self.started = started
        self.probe_times: list[float] | None = []  # None once the schedule is sized
        # Wall seconds from one step's end to the next one's: the step, the callbacks (progress bar,
        # logging) and whatever else the machine made the process wait for; intervals that held an
        # evaluation, sample or checkpoint are left out (the plan counts those on their own).
        self.recent: deque[float] = deque(maxlen=RECENT_STEPS)
        self.last_step_end: float | None = None

    def after_step(self, trainer: Any, seconds: float, eval_s: float) -> None:
        """Record one step; size the schedule once the probe is done, later keep it to the pace."""
        now = time.perf_counter()
        if self.probe_times is not None:
            # Timed as the re-checks time them (callbacks and logging included), so a run that
            # keeps its pace is never found late; the first step has no start mark but its own.
            self.probe_times.append(seconds if self.last_step_end is None else now - self.last_step_end)
            self.last_step_end = now
            # Sizing is a collective: every process must decide to size at the same step (the time
            # test of probe_done could pass on one and not yet on another).
            if any_rank(probe_done(self.probe_times, self.budget_s), trainer.dist, trainer.device):
                size_trainer(trainer, self.budget_s, now - self.started, self.probe_times, eval_s)
                self.probe_times = None
                self.last_step_end = time.perf_counter()
            return
        eval_every, checkpoint_every, sample_every = trainer.cfg.intervals()
        previous = trainer.step - 1  # its evaluation, sample and checkpoint ran in this interval
        quiet = previous % eval_every and previous % checkpoint_every
        if quiet and not (sample_every and previous % sample_every == 0):
            self.recent.append(now - self.last_step_end)
        self.last_step_end = now
        if not trainer.dist.enabled or trainer.step % RECHECK_EVERY == 0:
            resize_to_pace(trainer, self.deadline - now, list(self.recent))


def resize_to_pace(trainer: Any, remaining_s: float, recent_step_s: list[float]) -> bool:
    """Resize a sized run's ``max_steps`` to the pace of its steps: shrink it when the rest no
    longer fits in ``remaining_s`` (less ``LATE_MARGIN``), grow it when the rest would leave more
    than ``EARLY_MARGIN`` of the budget unused (only at a measured pace, not the probe's), in both
    cases to what fits with the full ``MARGIN``, so a steady pace settles after one change. The
    pace is the plan's step time until ``recent_step_s`` holds ``RECENT_STEPS`` steps, then their
    median. Returns whether it resized; run.json and ``on_schedule`` say so."""
    plan = trainer.run_info.get("time_budget")
    if not plan or trainer.step >= trainer.cfg.max_steps:
        return False
    cfg = trainer.cfg
    measured = len(recent_step_s) >= RECENT_STEPS
    step_s = statistics.median(recent_step_s) if measured else plan["step_s"]
    reserves = (LATE_MARGIN, MARGIN, EARLY_MARGIN)
    fits = [size_schedule(
        remaining_s=remaining_s - reserve * plan["budget_s"], done_steps=trainer.step, step_s=step_s,
        eval_s=plan["eval_s"], sample_s=plan["sample_s"], checkpoint_s=plan["checkpoint_s"],
        eval_every=cfg.eval_every, sample_every=cfg.sample_every, checkpoint_every=cfg.checkpoint_every,
    ) for reserve in reserves]
    # Every process must stop at the same step: they take the smallest answers (one collective).
    agreed = all_reduce_min(torch.tensor(fits, dtype=torch.float64, device=trainer.device), trainer.dist)
    fit_late, fit_margin, fit_early = (int(n) for n in agreed.tolist())
    late = fit_late < cfg.max_steps
    early = measured and fit_early > cfg.max_steps
    if not (late or early):
        return False
    plan.setdefault("sized_max_steps", plan["max_steps"])  # what the first sizing chose
    plan.setdefault("resized", []).append({"at_step": trainer.step, "step_s": round(step_s, 6),
                                           "max_steps": fit_margin})
    plan.update(max_steps=fit_margin, warmup_steps=warmup_within(cfg.warmup_steps, trainer.step, fit_margin))
    apply_plan(trainer, plan)
    return True
