"""Stage 4, a corpus -> a trained model (pretraining).

The loop knows nothing of the model's internals: it feeds (inputs, targets) windows of token ids,
minimises next-token cross-entropy and reports through ``TrainCallbacks`` hooks. Lowest first:

- ``config``: ``TrainConfig``; ``losses``: next-token cross-entropy a few rows at a time (the
  CPU's cache-sized chunks); ``evaluation``: the loss, ``evaluate``, perplexity and the periodic
  sample's text;
  ``callbacks``: the hooks and ``TrainResult``; ``schedule``: AdamW groups, warm-up + cosine;
- ``batches``: resumable batch order over windows cut differently each epoch;
  ``distributed``: torchrun/DDP helpers;
- ``rng_state``: every generator's state, saved with a checkpoint for an exact resume;
- ``checkpointing`` and ``run_dir``: run directories, checkpoints with exact resume, pruning;
  ``training_state``: what a checkpoint stores beside the weights, and putting it back;
  ``run_log``: ``metrics.jsonl`` and ``samples.txt``, cut back to the checkpoint on resume;
- ``time_budget``: sizing the schedule so that a run ends within ``--time-budget``;
  ``vocab_trim``: the head computed only for the tokens the training split uses (``--trim-vocab``);
- ``plots``: loss curves; ``recipes``: named training set-ups;
- ``trainer``: the ``Trainer`` loop (accumulation, clipping, autocast, evaluation, samples, clean
  stops on Ctrl-C/SIGTERM and on a non-finite loss);
- ``run``: ``prepare_splits`` and ``train``, one call from a corpus to a model.

May import: ``gptsmith.generate`` (for samples), ``gptsmith.model``, ``gptsmith.data`` and the
top-level helpers.
"""
