"""Exact resume: a stopped, killed or corrupted run continues with bit-identical losses on CPU.

Bit-identical (not merely close) because everything a step depends on is restored: weights,
AdamW moments and step counts, the data sampler's (epoch, position), and the torch/numpy/python
RNG states (dropout is on in these tests); CPU kernels are deterministic for a fixed thread count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from training_helpers import (
    TINY,
    make_trainer,
    tiny_config,
    write_cli_inputs,
)

from gptsmith.cli import main
from gptsmith.errors import CheckpointError, ConfigError
from gptsmith.model.checkpoint import load_model
from gptsmith.model.gpt import GPTConfig
from gptsmith.train import checkpointing as ckpt
from gptsmith.train import run_log
from gptsmith.train.callbacks import TrainCallbacks

DROPOUT = GPTConfig(**{**TINY.to_dict(), "drop_rate": 0.1})


def resume_config(**overrides):
    base = dict(max_steps=12, eval_every=12, checkpoint_every=4, target_batch_tokens=256)
    return tiny_config(**{**base, **overrides})


class StopAt(TrainCallbacks):
    def __init__(self, trainer, step, how="request"):
        self.trainer, self.step, self.how = trainer, step, how

    def on_step(self, info):
        if info["step"] == self.step:
            if self.how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)  # handled: finish the step, checkpoint, stop
            else:
                self.trainer.request_stop()


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce (computed once)."""
    return make_trainer(tmp_path_factory.mktemp("full") / "run", resume_config(), model_cfg=DROPOUT).fit()


@pytest.mark.parametrize("how", ["request", "sigterm"])
def test_stopped_run_resumes_bit_identically(tmp_path, how, full):
    trainer = make_trainer(tmp_path / "run", resume_config(), model_cfg=DROPOUT)
    trainer.callbacks = StopAt(trainer, 6, how)  # between checkpoints 4 and 8: a checkpoint at 6 is written
    stopped = trainer.fit()
    assert stopped.stopped == "interrupted" and stopped.step == 6
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoints/step-000006"
    resumed = make_trainer(tmp_path / "run", resume_config(), model_cfg=DROPOUT)
    resumed.resume()
    rest = resumed.fit()
    assert stopped.losses + rest.losses == full.losses  # exact equality of floats
    assert rest.evals[-1]["val_loss"] == full.evals[-1]["val_loss"]
    train_records = [r["loss"] for r in run_log.read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert train_records == full.losses


def assert_stop_at_6_resumes_bit_identically(tmp_path, cfg):
    """A run of ``cfg`` stopped at step 6 and resumed gives the uninterrupted run's losses exactly."""
    full_run = make_trainer(tmp_path / "full", cfg, model_cfg=DROPOUT).fit()
    trainer = make_trainer(tmp_path / "run", cfg, model_cfg=DROPOUT)
    trainer.callbacks = StopAt(trainer, 6)
    stopped = trainer.fit()
    resumed = make_trainer(tmp_path / "run", cfg, model_cfg=DROPOUT)
    resumed.resume()
    assert stopped.losses + resumed.fit().losses == full_run.losses


def test_a_muon_run_resumes_bit_identically(tmp_path):
    """Both halves of MuonAdamW (Muon's momentum, AdamW's moments) come back from the checkpoint."""
    cfg = resume_config(optimizer="muon")
    assert_stop_at_6_resumes_bit_identically(tmp_path, cfg)


@pytest.mark.parametrize("saved, here", [("adamw", "muon"), ("muon", "adamw")])
def test_resume_with_another_optimizer_names_the_one_to_use(tmp_path, saved, here):
    run = tmp_path / "run"
    make_trainer(run, resume_config(max_steps=4, optimizer=saved)).fit()
    with pytest.raises(CheckpointError, match=rf"trained with optimizer='{saved}'.*--optimizer {saved}"):
        make_trainer(run, resume_config(optimizer=here)).resume()


def test_corrupt_checkpoint_is_refused_and_fallback_uses_the_previous_one(tmp_path, full):
    run = tmp_path / "run"
    trainer = make_trainer(run, resume_config(), model_cfg=DROPOUT)
    trainer.callbacks = StopAt(trainer, 8)
    trainer.fit()
    weights = run / "checkpoints" / "step-000008" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a torn write from another tool
    message = r"step-000008/model.safetensors.*corrupt or partial.*--fallback"
    with pytest.raises(CheckpointError, match=message):
        make_trainer(run, resume_config(), model_cfg=DROPOUT).resume()
    resumed = make_trainer(run, resume_config(), model_cfg=DROPOUT)
    problems = resumed.resume(fallback=True)
    assert resumed.step == 4 and "step-000008" in problems[0]
    # The bad checkpoint is moved aside, so it never counts among the last K kept instead of a good one.
    assert (run / "checkpoints" / "corrupt-step-000008").is_dir()
    assert not (run / "checkpoints" / "step-000008").exists()
    assert resumed.fit().losses == full.losses[4:]


def test_partial_checkpoints_are_refused_with_their_path(tmp_path):
    run = tmp_path / "run"
    make_trainer(run, resume_config(max_steps=8)).fit()
    latest = run / "checkpoints" / "step-000008"
    (latest / "training_state.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CheckpointError, match=r"cannot read .*step-000008/training_state.pt"):
        make_trainer(run, resume_config()).resume()
    (latest / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"step-000008 has no config.json .*--fallback"):
        make_trainer(run, resume_config()).resume()


def test_resume_with_a_different_model_config_names_the_difference(tmp_path):
    run = tmp_path / "run"
    make_trainer(run, resume_config(max_steps=4)).fit()
    wider = GPTConfig(**{**TINY.to_dict(), "emb_dim": 64})
    with pytest.raises(CheckpointError, match=r"different model config: emb_dim=32 there vs 64 here"):
        make_trainer(run, resume_config(), model_cfg=wider).resume()


def test_resuming_with_another_global_batch_is_an_error(tmp_path):
    run = tmp_path / "run"
    make_trainer(run, tiny_config(max_steps=2, eval_every=2)).fit()
    state_path = run / "checkpoints" / "step-000002" / ckpt.STATE_FILE
    state = torch.load(state_path, weights_only=True)
    assert (state["world_size"], state["tokens_per_step"]) == (1, 128)
    state.update(world_size=2, tokens_per_step=256)  # as if saved by `torchrun --nproc_per_node=2`
    torch.save(state, state_path)
    with pytest.raises(ConfigError, match=r"trained with 256 tokens per step from 2 process\(es\); 1 "
                       r"process\(es\) now make 128 \(resume with the run's number of processes"):
        make_trainer(run, tiny_config(max_steps=4)).resume()


# --- through the command line, with a real SIGKILL ----------------------------------------------





def cli_args(corpus, config, out, steps=30):
    return ["train", "--data", str(corpus), "--tokenizer", "simple", "--config", str(config),
            "--out", str(out), "--max-steps", str(steps), "--eval-every", "15", "--checkpoint-every", "5",
            "--device", "cpu", "--dtype", "fp32", "--no-progress"]


def train_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in run_log.read_metrics(run_dir) if r["kind"] == "train"]


def steps_past_checkpoint(run_dir: Path) -> int:
    """How many steps metrics.jsonl has logged beyond the `latest` checkpoint (-1: none yet)."""
    latest = ckpt.read_pointer(run_dir, "latest")
    logged = [r["step"] for r in run_log.read_metrics(run_dir) if r["kind"] == "train"]
    return logged[-1] - int(latest[-6:]) if latest and logged else -1


@pytest.mark.slow
def test_run_killed_between_checkpoints_resumes_and_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    corpus, config = write_cli_inputs(tmp_path)
    assert main(cli_args(corpus, config, tmp_path / "full")) == 0
    expected = train_losses(tmp_path / "full")
    assert len(expected) == 30

    run = tmp_path / "killed"
    env = {**os.environ, "GPTSMITH_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "gptsmith", *cli_args(corpus, config, run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if steps_past_checkpoint(run) >= 2:
            # Freeze it, then look again: it may have reached the next checkpoint meanwhile.
            os.kill(proc.pid, signal.SIGSTOP)
            os.waitpid(proc.pid, os.WUNTRACED)
            if steps_past_checkpoint(run) >= 2:
                break
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)  # no handler can run: whatever is on disk is all there is
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    killed_at = ckpt.read_pointer(run, "latest")
    assert killed_at is not None and int(killed_at[-6:]) < 30
    assert steps_past_checkpoint(run) >= 2  # killed between checkpoints, with steps logged after one

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    # The steps logged after the checkpoint were dropped and run again: each step appears once.
    assert train_losses(run) == expected  # bit-identical, steps before and after the kill
    final, reference = load_model(run).state_dict(), load_model(tmp_path / "full").state_dict()
    assert all(torch.equal(final[name], reference[name]) for name in reference)


def test_resume_is_bit_identical_under_bf16_autocast(tmp_path):
    from gptsmith.device import cpu_has_fast_bf16

    if not cpu_has_fast_bf16():
        pytest.skip("this CPU has no native bf16, so `gptsmith train` would not use bf16 autocast")
    cfg = resume_config(dtype="bf16")
    assert_stop_at_6_resumes_bit_identically(tmp_path, cfg)
