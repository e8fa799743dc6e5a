"""Tiny models, data and configs shared by the training, resume, DDP and CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gptsmith.model.gpt import GPTConfig, GPTModel
from gptsmith.train.config import TrainConfig
from gptsmith.train.trainer import Trainer

VOCAB = 64


TINY = GPTConfig(vocab_size=VOCAB, context_length=32, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0)


def pattern_tokens(n: int = 12000, seed: int = 0) -> np.ndarray:
    """A learnable sequence: counting 0..49 with a little noise."""
    noise = np.random.default_rng(seed).integers(0, 2, n)
    return ((np.arange(n) % 50 + noise) % VOCAB).astype(np.uint16)


def tiny_config(**overrides) -> TrainConfig:
    base = dict(batch_size=4, max_steps=12, lr=5e-3, warmup_steps=2, eval_every=6, eval_batches=2,
                dtype="fp32", device="cpu", seed=1)
    return TrainConfig(**{**base, **overrides})


def make_trainer(run_dir=None, cfg=None, model_cfg=TINY, tokens=None, **kwargs) -> Trainer:
    torch.manual_seed(1)
    tokens = pattern_tokens() if tokens is None else tokens
    split = int(len(tokens) * 0.9)
    return Trainer(GPTModel(model_cfg), cfg or tiny_config(), tokens[:split], tokens[split:], run_dir=run_dir,
                   **kwargs)


MODEL_YAML = """model:
  preset: tiny
  context_length: 32
  emb_dim: 32
  n_heads: 2
  n_layers: 2
  drop_rate: 0.1
train:
  batch_size: 4
  lr: 0.005
  warmup_steps: 4
  eval_batches: 2
  sample_tokens: 8
"""


def write_cli_inputs(tmp_path: Path) -> tuple[Path, Path]:
    from gptsmith.data.corpus import builtin_documents

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(builtin_documents()[:6]), encoding="utf-8")
    config = tmp_path / "tiny.yaml"
    config.write_text(MODEL_YAML, encoding="utf-8")
    return corpus, config


def train_args(corpus, config, out, *extra):
    return ["train", "--data", str(corpus), "--tokenizer", "simple", "--config", str(config),
            "--out", str(out), "--device", "cpu", "--no-progress", *extra]
