"""Ready-made training recipes: a corpus, a model preset and the settings that suit them.

Each recipe is plain data: ``preset`` names a ``GPTConfig`` preset, ``model`` overrides its
fields, ``train`` overrides ``TrainConfig`` fields. ``gptsmith train --recipe NAME`` starts from
it; any flag or ``--config`` file still overrides it. A recipe that names ``optimizer: muon`` gets
AdamW on a PyTorch without ``torch.optim.Muon`` (before 2.9). Figures in ``notes`` were measured on a
shared 2-core AMD EPYC (Zen 4) CPU with torch 2.13 (see docs/train.md, "Recipes").
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from typing import Any

from gptsmith.errors import ConfigError

RECIPES: dict[str, dict[str, Any]] = {
    # The main job (`gptsmith train` with no arguments): a few minutes on 2 CPU cores. Label
    # smoothing costs 0.04 nats of val loss here and saves ~1 nat on English outside the corpus
    # (docs/train.md, "Recipes"); ~4.6 passes did not memorise with AdamW, so no dropout. Muon:
    # 0.15 nats lower val loss and 0.13-0.28 on English outside the corpus than AdamW, same steps.
    "default": {
        "preset": "tiny",
        "model": {},
        "train": {"data": "builtin", "batch_size": 8, "max_steps": 500, "lr": 2e-3, "warmup_steps": 20,
                  "optimizer": "muon", "label_smoothing": 0.1, "trim_vocab": True, "eval_every": 100,
                  "eval_batches": 10, "sample_prompt": "The module"},
        "notes": "builtin corpus (Python's pydoc topics, ~0.46 MB of text)",
    },
    # The seeds' corpus: one short story (~5k GPT-2 tokens). It overfits quickly; the point is to
    # watch train loss fall far below val loss.
    "the-verdict": {
        "preset": "tiny",
        "model": {},
        "train": {"data": "the-verdict", "batch_size": 4, "max_steps": 100, "lr": 1e-3, "warmup_steps": 10,
                  "trim_vocab": True, "eval_every": 10, "eval_batches": 5,
                  "sample_prompt": "Every effort moves you"},
        "notes": "one short story, ~5k tokens",
    },
    # The best model 10 minutes buy on 2 CPU cores (BENCHMARKS.md "budget"; docs/train.md
    # "Recipes" says why): the schedule is sized to the budget (--max-steps replaces it); small
    # batches buy more steps, and dropout 0.2 with label smoothing keep ~9 passes over 0.3M
    # tokens learning the language instead of memorising the text. The head computed only for the
    # tokens the text uses (--trim-vocab) pays for 16 layers instead of 4: val 4.55 against 4.63;
    # with the windows cut differently every pass and the faster trimmed loss, 4.50. Smoothing
    # 0.05 rather than 0.1 puts half as much probability on the ~39k tokens the text never uses:
    # 4.49, unseen English still within 0.3 nats of the nanoGPT-settings run.
    "tinyshakespeare": {
        "preset": "tiny",
        "model": {"drop_rate": 0.2, "n_layers": 16},
        "train": {"data": "tinyshakespeare", "batch_size": 8, "max_steps": 3000, "time_budget": "10m",
                  "optimizer": "muon", "lr": 3e-3, "warmup_steps": 50, "weight_decay": 0.1,
                  "label_smoothing": 0.05, "trim_vocab": True, "eval_every": 250, "eval_batches": 10,
                  "sample_prompt": "ROMEO:"},
        "notes": "~1.1 MB of Shakespeare's plays, ~0.34M tokens; 10 minutes",
    },
    # The larger corpus, sized for a CPU: about two passes over 1.4M training tokens. On a GPU,
    # the same data deserves a bigger model: --preset small --context-length 256 --max-steps 5000.
    # Muon with label smoothing: val 4.36 and unseen English 7.35 / 7.08, against AdamW's 4.67 and
    # 7.55 / 7.33 (docs/train.md, "Recipes").
    "shakespeare_complete": {
        "preset": "tiny",
        "model": {},
        "train": {"data": "shakespeare_complete", "batch_size": 16, "max_steps": 1500, "lr": 2e-3,
                  "warmup_steps": 50, "optimizer": "muon", "label_smoothing": 0.1, "trim_vocab": True,
                  "eval_every": 250, "eval_batches": 10,
                  "sample_prompt": "KING HENRY:"},
        "notes": "~5 MB, Shakespeare's complete works (1.57M tokens)",
    },
}


def get_recipe(name: str) -> dict[str, Any]:
    """The recipe called ``name`` (a copy; unknown names list the known ones)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})")
    recipe = RECIPES[name]
    train = dict(recipe["train"])
    if train.get("optimizer") == "muon" and not torch_has_muon():
        train["optimizer"] = "adamw"  # PyTorch before 2.9: the recipe's settings with AdamW
    return {"preset": recipe["preset"], "model": dict(recipe["model"]), "train": train,
            "notes": recipe.get("notes", "")}


def torch_has_muon() -> bool:
    """Whether this PyTorch has ``torch.optim.Muon`` (2.9 and later), without importing torch
    when it is not loaded yet (``gptsmith train --help`` shows the recipe's optimizer)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return hasattr(torch.optim, "Muon")
    try:
        major, minor = (int(n) for n in re.findall(r"\d+", metadata.version("torch"))[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (2, 9)
