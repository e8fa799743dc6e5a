"""The memory a training step needs: the estimate (against measured peaks), the refusal before a
run that cannot fit, and `gptsmith info`'s table of it."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from training_helpers import train_args, write_cli_inputs

from gptsmith.cli import main
from gptsmith.model import memory
from gptsmith.model.gpt import PRESETS, GPTConfig, summarize

# Peak RSS growth of two fp32 AdamW Trainer steps on the CPU (torch 2.13, 2 threads, the chunked
# CPU loss), for (batch, context, emb_dim, n_layers, vocab_size, drop_rate) with n_heads =
# emb_dim // 64. Re-measured 2026-12-03 over the whole ``Trainer.fit`` of 2 steps (its final
# evaluation of 1 batch included), after the CPU's attention dropout moved to the written-out path.
MEASURED_MIB = [
    ((4, 256, 128, 4, 50257, 0.0), 748),  # logits dominate
    ((2, 2048, 128, 4, 1000, 0.0), 244),  # fused attention: activations grow with the context
    ((2, 2048, 128, 4, 1000, 0.1), 1777),  # attention dropout: (n x n) probabilities kept
    ((8, 512, 384, 6, 1000, 0.0), 898),  # weights, optimizer and activations
    ((1, 4096, 64, 2, 1000, 0.1), 955),
]
# The first case with F.cross_entropy (the loss GPUs use) instead: 1,124 MiB, the same day.
F_CROSS_ENTROPY_MIB = 1124


@pytest.mark.parametrize(("case", "measured_mib"), MEASURED_MIB)
def test_the_estimate_is_conservative_and_of_the_measured_order(case, measured_mib):
    batch, context, emb_dim, n_layers, vocab_size, drop_rate = case
    cfg = GPTConfig(vocab_size=vocab_size, context_length=context, emb_dim=emb_dim, n_heads=emb_dim // 64,
                    n_layers=n_layers, drop_rate=drop_rate)
    estimate = memory.train_step_memory(cfg, batch, context)
    assert estimate["total"] == sum(v for k, v in estimate.items() if k != "total")
    assert measured_mib <= estimate["total"] / 2**20 <= 2 * measured_mib


def test_a_gpu_step_is_estimated_with_more_copies_of_the_logits():
    cfg = GPTConfig(vocab_size=50257, context_length=256, emb_dim=128, n_heads=2, n_layers=4, drop_rate=0.0)
    cpu, gpu = memory.train_step_memory(cfg, 4, 256), memory.train_step_memory(cfg, 4, 256, "cuda:0")
    assert gpu["logits"] * memory.CPU_LOGIT_COPIES == cpu["logits"] * memory.LOGIT_COPIES
    assert F_CROSS_ENTROPY_MIB <= gpu["total"] / 2**20 <= 2 * F_CROSS_ENTROPY_MIB
    assert cpu["total"] / 2**20 < F_CROSS_ENTROPY_MIB  # the CPU estimate would refuse less


def test_parameter_count_is_exact_and_works_for_any_size():
    for cfg in PRESETS.values():
        for tie, bias in ((True, True), (False, False)):
            variant = dataclasses.replace(cfg, tie_weights=tie, qkv_bias=bias)
            assert memory.parameter_count(variant) == summarize(variant).params
    huge = GPTConfig(emb_dim=10**9, n_heads=1, n_layers=10**9)
    assert memory.parameter_count(huge) > 10**27  # plain ints: no overflow


def test_a_run_that_cannot_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    corpus, config = write_cli_inputs(tmp_path)
    monkeypatch.setattr(memory, "available_memory", lambda device: 2**20)  # a 1 MiB machine
    run = tmp_path / "run"
    assert main(train_args(corpus, config, run, "--max-steps", "2")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gptsmith train: error: a training step needs about ")
    assert "at batch 4 x context 32) but only 1.0 MiB of memory is available on cpu: lower --batch-size" \
        in err
    assert not run.exists()


def test_a_context_of_100000_is_refused_not_killed(shared_data, gpt2_tokenizer, tmp_path, monkeypatch,
                                                    capsys):
    """The sweep's case: the logits alone of one sequence of 100,000 tokens need ~20 GB per copy."""
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(memory, "available_memory", lambda device: 24 * 2**30)
    args = ["train", "--data", str(shared_data / "tinyshakespeare.txt"), "--preset", "tiny", "--batch-size",
            "1", "--context-length", "100000", "--val-fraction", "0.5", "--eval-batches", "1", "--device",
            "cpu", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "a training step needs about 62.9 GiB" in err and "logits 56.2 GiB" in err
    assert err.strip().endswith("but only 24.0 GiB of memory is available on cpu: lower --context-length")


def test_info_shows_the_step_memory_for_a_batch_and_context(capsys):
    assert main(["info", "gpt2-small", "--batch-size", "2", "--context-length", "512"]) == 0
    out = capsys.readouterr().out
    cfg = PRESETS["gpt2-small"]
    need = memory.train_step_memory(cfg, 2, 512)
    assert (f"one training step at batch 2 x context 512: about {memory.gib(need['total'])} "
            f"(weights and AdamW {memory.gib(need['weights_and_optimizer'])}, activations "
            f"{memory.gib(need['activations'])}, logits {memory.gib(need['logits'])})") in out
    assert main(["info", "tiny", "--json"]) == 0  # defaults: batch 8, the model's context
    data = json.loads(capsys.readouterr().out)
    assert data["train_step"] == {"batch_size": 8, "context_length": 128,
                                  **memory.train_step_memory(PRESETS["tiny"], 8, 128)}
    assert main(["info", "tiny", "--context-length", "129"]) == 2
    assert "--context-length 129 is longer than the model's context of 128" in capsys.readouterr().err


def test_eval_of_a_batch_that_cannot_fit_is_refused(gpt2_tokenizer, tmp_path, monkeypatch, capsys):
    from training_helpers import write_cli_inputs

    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    corpus, _ = write_cli_inputs(tmp_path)
    monkeypatch.setattr(memory, "available_memory", lambda device: 200 * 2**20)
    argv = ["eval", "--preset", "tiny", "--data", str(corpus), "--device", "cpu", "--max-batches", "1"]
    assert main([*argv, "--batch-size", "100000"]) == 2  # as many sequences as the split has
    err = capsys.readouterr().err
    assert re.match(r"gptsmith eval: error: scoring a batch of \d+ x 128 tokens needs about [\d.]+ GiB but "
                    r"only 200.0 MiB of memory is available on cpu: lower --batch-size\n$", err), err
    assert main([*argv, "--batch-size", "1"]) == 0  # one sequence fits
