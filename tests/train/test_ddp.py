"""Two CPU processes under torchrun (gloo) train like one process with the same global batch.

Not bit-exact: with 2 ranks each process averages the loss over its half of the batch and DDP
averages the two gradients (sum / 2), while one process averages over the whole batch at once;
floating-point addition in a different order rounds differently (~1e-7 relative per step), and
those differences are amplified slightly by later steps. Agreement to ~1e-5 shows the data split,
gradient all-reduce and accumulation (no_sync) are right.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_helpers import make_trainer, tiny_config

from gptsmith.train import distributed
from gptsmith.train.callbacks import TrainCallbacks, _late_echo_handler

TESTS_DIR = Path(__file__).resolve().parents[1]  # tests/, where training_helpers.py lives

WORKER = """
import json, os, sys
import torch
sys.path.insert(0, {tests_dir!r})
from training_helpers import make_trainer, tiny_config

torch.set_num_threads(1)  # two processes share two cores
world = int(os.environ.get("WORLD_SIZE", "1"))
cfg = tiny_config(batch_size=4 // world, max_steps=6, eval_every=3, target_batch_tokens=4 * 32 * 2,
                  optimizer=os.environ["TEST_OPTIMIZER"], trim_vocab=os.environ["TEST_TRIM"] == "1")
run_dir = sys.argv[2] if len(sys.argv) > 2 else None
trainer = make_trainer(run_dir, cfg)
result = trainer.fit()
if trainer.dist.is_main:
    with open(sys.argv[1], "w") as f:
        json.dump({{"losses": result.losses, "val": [e["val_loss"] for e in result.evals],
                   "trimmed": trainer.trimmed_vocab is not None,
                   "accum": trainer.accum_steps, "world": trainer.dist.world_size}}, f)
from gptsmith.train.distributed import shutdown
shutdown(trainer.dist)
"""


# Muon orthogonalises each update in bfloat16, which amplifies the ~1e-7 differences of the
# all-reduce (1.1e-5 measured over these 6 steps); a wrong data split or a missing all-reduce moves
# the losses by far more.
@pytest.mark.slow
# With trim_vocab, every rank computes the same used tokens and re-ties the same rows.
@pytest.mark.parametrize("optimizer, tolerance, trim", [("adamw", 1e-5, False), ("muon", 1e-4, False),
                                                        ("adamw", 1e-5, True)])
def test_two_process_ddp_matches_one_process(tmp_path, monkeypatch, optimizer, tolerance, trim):
    monkeypatch.setenv("TEST_OPTIMIZER", optimizer)
    monkeypatch.setenv("TEST_TRIM", "1" if trim else "0")
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(tests_dir=str(TESTS_DIR)), encoding="utf-8")
    single, double = tmp_path / "single.json", tmp_path / "ddp.json"
    subprocess.run([sys.executable, str(worker), str(single)], check=True, timeout=300)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(worker), str(double), str(tmp_path / "run")],
        check=True, timeout=300, capture_output=True,
    )
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert (one["world"], two["world"]) == (1, 2)
    assert one["accum"] == two["accum"] == 2  # accumulation + no_sync exercised in both
    assert one["trimmed"] == two["trimmed"] == trim
    assert two["losses"] == pytest.approx(one["losses"], rel=tolerance, abs=tolerance)
    assert two["val"] == pytest.approx(one["val"], rel=tolerance, abs=tolerance)
    assert one["losses"][-1] < one["losses"][0]
    # Only rank 0 wrote the run directory.
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoints/step-000006"


BUDGET_WORKER = """
import json, os, sys, time
import torch
sys.path.insert(0, {tests_dir!r})
from training_helpers import make_trainer, tiny_config

torch.set_num_threads(1)
cfg = tiny_config(batch_size=2, max_steps=5, time_budget="4s", eval_every=0, checkpoint_every=0,
                  eval_batches=1)
trainer = make_trainer(sys.argv[2], cfg)
step = trainer._train_step
def slow_on_rank_1():  # one rank gets slower after the sizing: the other waits for it at every step
    out = step()
    if trainer.dist.rank == 1 and "time_budget" in trainer.run_info:
        time.sleep(0.05)
    return out
trainer._train_step = slow_on_rank_1
started = time.perf_counter()
result = trainer.fit()
with open(sys.argv[1] + str(trainer.dist.rank), "w") as f:
    json.dump({{"step": result.step, "max_steps": trainer.cfg.max_steps,
               "wall": time.perf_counter() - started, "plan": trainer.run_info["time_budget"]}}, f)
from gptsmith.train.distributed import shutdown
shutdown(trainer.dist)
"""


@pytest.mark.slow
def test_a_budgeted_two_process_run_shrinks_on_every_rank_alike(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(BUDGET_WORKER.format(tests_dir=str(TESTS_DIR)), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(worker), str(tmp_path / "rank"), str(tmp_path / "run")],
        timeout=300, capture_output=True, text=True,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}").read_text()) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == ranks[0]["max_steps"] == ranks[1]["max_steps"]
    plan = ranks[0]["plan"]
    # The budget, give or take the steps between two re-checks (every 10 under torchrun) and the
    # final evaluation; without the shrink this run would take 20 s or more.
    assert ranks[0]["wall"] < 4.0 + 2.0, ranks
    sized = plan.get("sized_max_steps", plan["max_steps"])
    if sized * 0.05 > 4.0:  # as sized, the slow rank's 50 ms per step alone would overrun the budget
        assert plan["resized"] and plan["max_steps"] < sized
        assert json.loads((tmp_path / "run" / "run.json").read_text())["time_budget"] == plan


class CtrlC(TrainCallbacks):
    """Sends this process SIGINT at step 2: once, or twice ``gap_s`` apart (the terminal's Ctrl-C,
    then torchrun's agent forwarding it)."""

    def __init__(self, twice_after_s: float | None = None):
        self.twice_after_s = twice_after_s

    def on_step(self, info):
        if info["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next line
            if self.twice_after_s is not None:
                time.sleep(self.twice_after_s)
                os.kill(os.getpid(), signal.SIGINT)


def test_under_torchrun_a_ctrl_c_forwarded_by_its_agent_still_stops_with_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")  # as torchrun starts each process
    trainer = make_trainer(tmp_path / "run", tiny_config(max_steps=6), callbacks=CtrlC(twice_after_s=0.01))
    try:
        result = trainer.fit()
    except KeyboardInterrupt:  # (not raised on: pytest would stop every test there)
        pytest.fail("the agent's copy of the Ctrl-C aborted the run, as a second Ctrl-C")
    assert result.stopped == "interrupted" and result.step == 2
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoints/step-000002"


def test_under_torchrun_an_echo_after_the_run_saved_and_returned_is_dropped(tmp_path, monkeypatch):
    # A tiny model stops and saves within milliseconds: the agent's copy can come after fit().
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setattr(distributed, "SIGNAL_ECHO_S", 0.5)
    # An earlier run's echo handler (the test before) must not drop the second Ctrl-C either: it
    # is chained in, as a notebook's second training run would chain it.
    signal.signal(signal.SIGINT, _late_echo_handler(time.monotonic(), 30.0, signal.default_int_handler))
    trainer = make_trainer(tmp_path / "run", tiny_config(max_steps=6), callbacks=CtrlC())
    try:
        result = trainer.fit()
        assert result.stopped == "interrupted" and result.step == 2
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the echo, late
        except KeyboardInterrupt:
            pytest.fail("the agent's late copy of the Ctrl-C interrupted a run that had stopped cleanly")
        time.sleep(0.6)
        with pytest.raises(KeyboardInterrupt):  # a real second Ctrl-C, later, still interrupts
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.mark.parametrize("torchrun", [False, True])
def test_a_second_ctrl_c_still_aborts(tmp_path, monkeypatch, torchrun):
    if torchrun:  # later than the echo of the first: a second Ctrl-C, meant to abort
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
        monkeypatch.setattr(distributed, "SIGNAL_ECHO_S", 0.05)
    trainer = make_trainer(tmp_path / "run", tiny_config(max_steps=6), callbacks=CtrlC(twice_after_s=0.1))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks in Linux's /proc")
def test_ctrl_c_under_torchrun_stops_every_rank_with_a_checkpoint(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the module is imported and the name is bound to it. " * 400)
    run = tmp_path / "run"
    env = {**os.environ, "GPTSMITH_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "gptsmith", "train", "--data", str(corpus), "--tokenizer", "simple", "--preset", "tiny",
               "--context-length", "16", "--batch-size", "2", "--max-steps", "100000", "--eval-every", "0",
               "--device", "cpu", "--out", str(run), "--no-progress"]
    agent = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not ((run / "metrics.jsonl").is_file() and '"train"' in (run / "metrics.jsonl").read_text()):
            assert agent.poll() is None and time.monotonic() < deadline, agent.communicate()
            time.sleep(0.2)
        # Ctrl-C: the terminal signals every process; torchrun's agent forwards it to each rank again,
        # a moment later (sent here 50 ms apart, so each rank sees two signals, not one).
        for rank in _children(agent.pid):
            os.kill(rank, signal.SIGINT)
        time.sleep(0.05)
        agent.send_signal(signal.SIGINT)
        out, err = agent.communicate(timeout=120)
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
    stopped = [line for line in out.splitlines() if line.startswith("stopped at step")]
    assert len(stopped) == 1, out + err  # rank 0 says where it stopped, once
    step = int(stopped[0].split()[3])
    assert (run / "latest").read_text().strip() == f"checkpoints/step-{step:06d}"
    assert "KeyboardInterrupt" not in err and "gptsmith train: interrupted" not in err, err  # no abort
