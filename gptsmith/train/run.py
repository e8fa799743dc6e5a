"""One call from a corpus to a trained model: ``prepare_splits`` tokenizes a corpus (cached as a
token shard) and cuts it into train/validation tokens; ``train`` runs the ``Trainer`` on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptsmith.config import check_fraction
from gptsmith.data.tokenizer import as_tokenizer, tokenizer_kind
from gptsmith.errors import ConfigError
from gptsmith.train.config import TrainConfig
from gptsmith.train.trainer import Trainer


def prepare_splits(
    data: str,
    tokenizer: Any,
    val_fraction: float = 0.1,
    *,
    cache_dir: str | None = None,
    progress: Any = None,
    text_field: str = "text",
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Tokenize corpus ``data`` (cached as a token shard) and cut it into (train, val, info).
    ``text_field``: the field or column of a .jsonl/.parquet corpus that holds the text;
    ``cache_dir``: the folder of the shards, one per corpus and tokenizer (default: the user cache's).

    The validation split is the last ``val_fraction`` of the corpus (snapped to a document
    boundary when there are several documents), so it is never trained on. ``tokenizer`` is an
    object, or the name "gpt2"; a word-level tokenizer is passed as the object that knows the
    corpus's words (``gptsmith.data.shards.corpus_tokenizer("simple", data)``).
    """
    if isinstance(tokenizer, str) and tokenizer_kind(tokenizer) == "simple":
        # By name, a word-level tokenizer has the built-in corpus's words: about 30% of other English
        # would be <|unk|>, silently (the CLI's --tokenizer simple learns them from the corpus).
        raise ConfigError(f"prepare_splits: the tokenizer {tokenizer!r} by name knows only the built-in "
                          f"corpus's words: pass the one learnt from {data!r}, "
                          f"corpus_tokenizer('simple', {str(data)!r}) from gptsmith.data.shards "
                          "(and the same object to train)")
    tokenizer = as_tokenizer(tokenizer)
    check_fraction("val_fraction", val_fraction)
    from gptsmith.data.corpus import resolve_corpus
    from gptsmith.data.shards import default_shard_dir, prepare_corpus
    from gptsmith.data.windows import split_tokens

    source = resolve_corpus(data, text_field=text_field)
    # A cache holds a shard per corpus and tokenizer, named as in the user cache: used as the shard's
    # own folder, a second corpus was refused there ("holds a token shard of ...").
    out_dir = None if cache_dir is None else Path(cache_dir) / default_shard_dir(source, tokenizer.name).name
    shard = prepare_corpus(source, tokenizer.name, out_dir=out_dir, progress=progress, tokenizer=tokenizer)
    splits = split_tokens(shard, (1.0 - val_fraction, val_fraction))
    info = {"data": data, "source": shard.meta.get("source"), "n_tokens": len(shard.tokens),
            "n_train_tokens": len(splits["train"]), "n_val_tokens": len(splits["val"]),
            "checksum": shard.meta.get("checksum"), "tokenizer": tokenizer.name}
    return splits["train"], splits["val"], info


def train(model: torch.nn.Module, cfg: TrainConfig, train_tokens: np.ndarray, val_tokens: np.ndarray,
          **kwargs: Any):
    """Train ``model`` with ``cfg`` (a shortcut for ``Trainer(...).fit()``)."""
    return Trainer(model, cfg, train_tokens, val_tokens, **kwargs).fit()
