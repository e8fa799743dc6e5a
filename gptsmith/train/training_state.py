"""What a checkpoint's ``training_state.pt`` holds beside the weights, and how it is put back.

The step and tokens seen, the optimizer's state, the data position, the RNG states of torch,
numpy and Python, and the best-so-far bookkeeping: with the weights, everything an exact resume
needs (docs/train.md, "Exact resume"). Both functions read or set a ``Trainer``'s fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptsmith.config import to_dict
from gptsmith.train.checkpointing import check_global_batch
from gptsmith.train.rng_state import capture_rng_state, restore_rng_state
from gptsmith.train.schedule import load_optimizer_state


def capture_training_state(trainer: Any) -> dict[str, Any]:
    """The state of ``trainer`` that a checkpoint stores beside its weights."""
    return {
        "step": trainer.step,
        "tokens_seen": trainer.tokens_seen,
        "optimizer": trainer.optimizer.state_dict(),
        "data": trainer.sampler.state_dict(),
        "rng": capture_rng_state(),
        "best_val_loss": trainer.best_val_loss,
        "best_step": trainer.best_step,
        "last_val_loss": trainer.last_val_loss,
        "world_size": trainer.dist.world_size,
        "tokens_per_step": trainer.tokens_per_step,  # the global batch, checked on resume
        "train_config": json.dumps(to_dict(trainer.cfg)),
    }


def restore_training_state(trainer: Any, state: dict[str, Any], path: Path) -> None:
    """Put ``state`` (a checkpoint's, read from ``path``) back into ``trainer``; raises
    ``CheckpointError`` naming ``path`` when its global batch or optimizer does not match."""
    check_global_batch(state, path, trainer.tokens_per_step, trainer.dist.world_size)
    load_optimizer_state(trainer.optimizer, state["optimizer"], name=trainer.cfg.optimizer, source=path)
    trainer.sampler.load_state_dict(state["data"])
    restore_rng_state(state["rng"])
    trainer.step = int(state["step"])
    trainer.tokens_seen = int(state["tokens_seen"])
    trainer.best_val_loss = state.get("best_val_loss")
    trainer.best_step = state.get("best_step")
    trainer.last_val_loss = state.get("last_val_loss")
