"""Loss, evaluation, batches and the training loop (tiny models); the schedule and optimizers are
in test_schedule.py."""

from __future__ import annotations

import errno
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# --- loss and evaluation ------------------------------------------------------------------------
from training_helpers import (
    TINY,
    VOCAB,
    make_trainer,
    pattern_tokens,
    tiny_config,
)

from gptsmith.errors import CheckpointError, ConfigError, DataError
from gptsmith.model.checkpoint import load_model
from gptsmith.model.gpt import GPTConfig, GPTModel
from gptsmith.train import checkpointing as ckpt
from gptsmith.train import run_log
from gptsmith.train.batches import WindowSampler
from gptsmith.train.callbacks import TrainCallbacks
from gptsmith.train.config import TrainConfig
from gptsmith.train.evaluation import (
    NonFiniteLossError,
    calc_loss_batch,
    calc_loss_loader,
    evaluate,
    perplexity,
)
from gptsmith.train.recipes import RECIPES
from gptsmith.train.trainer import Trainer


def test_calc_loss_batch_is_cross_entropy_over_all_positions():
    model = GPTModel(TINY).eval()
    inputs = torch.randint(0, VOCAB, (3, 10))
    targets = torch.randint(0, VOCAB, (3, 10))
    with torch.no_grad():
        logits = model(inputs)
        expected = torch.stack([F.cross_entropy(logits[b], targets[b]) for b in range(3)]).mean()
        assert calc_loss_batch(inputs, targets, model).item() == pytest.approx(expected.item(), abs=1e-6)


def test_calc_loss_loader_averages_the_first_num_batches():
    model = GPTModel(TINY).eval()
    batches = [(torch.randint(0, VOCAB, (2, 8)), torch.randint(0, VOCAB, (2, 8))) for _ in range(3)]
    with torch.no_grad():
        losses = [calc_loss_batch(x, y, model).item() for x, y in batches]
        assert calc_loss_loader(batches, model, num_batches=2) == pytest.approx(sum(losses[:2]) / 2)
        assert calc_loss_loader(batches, model) == pytest.approx(sum(losses) / 3)
    with pytest.raises(DataError, match="no batches"):
        calc_loss_loader([], model)


def test_evaluate_uses_eval_mode_without_grad_and_restores_training_mode():
    model = GPTModel(GPTConfig(**{**TINY.to_dict(), "drop_rate": 0.5})).train()
    batches = [(torch.randint(0, VOCAB, (2, 8)), torch.randint(0, VOCAB, (2, 8)))]
    first = evaluate(model, batches, batches, 1)
    second = evaluate(model, batches, batches, 1)
    assert first == second  # dropout off: deterministic
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_untrained_model_scores_about_ln_vocab():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, context_length=64, emb_dim=64, n_heads=2, n_layers=2)
    model = GPTModel(cfg).eval()
    ids = torch.randint(0, 50257, (2, 64))
    with torch.no_grad():
        loss = calc_loss_batch(ids[:, :-1], ids[:, 1:], model).item()
    assert loss == pytest.approx(math.log(50257), abs=0.1)  # ln(50257) = 10.82
    assert perplexity(loss) == pytest.approx(50257, rel=0.1)


@pytest.mark.slow
def test_untrained_gpt2_small_scores_about_ln_vocab(gpt2_bpe_dir, monkeypatch):
    from gptsmith.data.tokenizer import get_tokenizer

    monkeypatch.setenv("GPTSMITH_GPT2_BPE", str(gpt2_bpe_dir))
    tokenizer = get_tokenizer("gpt2")
    text = "Every effort moves you forward, and the loss of an untrained model is the log of its vocabulary."
    ids = torch.tensor([tokenizer.encode(text)])
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.from_preset("gpt2-small", context_length=64)).eval()
    with torch.no_grad():
        loss = calc_loss_batch(ids[:, :-1], ids[:, 1:], model).item()
    # Random logits are not exactly uniform (std ~0.5 at GPT-2's init), which adds a few tenths to
    # ln(50257) = 10.82; with seed 0 the loss is 11.28.
    assert math.log(50257) - 0.1 < loss < math.log(50257) + 0.6


# --- batches ------------------------------------------------------------------------------------


def test_window_sampler_covers_each_window_once_per_epoch_and_resumes():
    tokens = np.arange(8 * 10 + 1)
    sampler = WindowSampler(tokens, 8, 3, seed=5)
    starts = [int(x[i, 0]) for _ in range(3) for x, _ in [sampler.next_batch()] for i in range(3)]
    assert len(set(starts[:9])) == 9 and all(s % 8 == 0 for s in starts)
    state = sampler.state_dict()
    expected = sampler.next_batch()[0]
    clone = WindowSampler(tokens, 8, 3, seed=5)
    clone.load_state_dict(state)
    assert torch.equal(clone.next_batch()[0], expected)  # straddles into epoch 1 the same way


def test_later_epochs_shift_the_window_grid():
    context, n_windows = 8, 10
    tokens = np.arange(context * n_windows + 1)
    sampler = WindowSampler(tokens, context, 1, seed=5)
    epochs: list[list[int]] = [[] for _ in range(4)]
    while True:
        start = int(sampler.next_batch()[0][0, 0])
        if sampler.epoch == 4:
            break
        epochs[sampler.epoch].append(start)
    assert sorted(epochs[0]) == [i * context for i in range(n_windows)]  # epoch 0: the plain grid
    offsets = set()
    for starts in epochs[1:]:
        offset = starts[0] % context
        # One shifted grid per epoch, each window once; a shifted grid has room for one fewer.
        assert sorted(starts) == [offset + i * context for i in range(len(starts))]
        assert len(starts) == (n_windows if offset == 0 else n_windows - 1)
        offsets.add(offset)
    assert offsets != {0}  # seed 5 shifts at least one of epochs 1-3


def test_a_split_of_one_window_keeps_its_grid():
    tokens = np.arange(8 + 1)
    sampler = WindowSampler(tokens, 8, 1, seed=0)
    assert [int(sampler.next_batch()[0][0, 0]) for _ in range(5)] == [0] * 5


def test_ranks_split_the_global_batch():
    tokens = np.arange(8 * 20 + 1)
    whole = WindowSampler(tokens, 8, 4, seed=3).next_batch()[0]
    parts = [WindowSampler(tokens, 8, 2, seed=3, rank=r, world_size=2).next_batch()[0] for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)


# --- the loop -----------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_writes_a_run_dir(tmp_path):
    result = make_trainer(tmp_path / "run", tiny_config(max_steps=30, eval_every=10)).fit()
    assert result.evals[-1]["val_loss"] < result.evals[0]["val_loss"] - 1.0
    assert result.evals[0]["val_loss"] == pytest.approx(math.log(VOCAB), abs=0.3)
    run = tmp_path / "run"
    assert (run / "latest").read_text().strip() == "checkpoints/step-000030"
    assert (run / "best").is_file() and (run / "loss.png").stat().st_size > 1000
    assert len(ckpt.list_checkpoints(run)) == 2  # keep_last=2
    records = run_log.read_metrics(run)
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 31))
    model = load_model(run)  # the run dir is a model dir for every loader
    assert model.cfg == TINY


def test_gradient_accumulation_reaches_the_target_batch():
    trainer = make_trainer(cfg=tiny_config(target_batch_tokens=4 * 32 * 3, max_steps=2))
    assert trainer.accum_steps == 3 and trainer.tokens_per_step == 384
    assert trainer.fit().tokens_seen == 768


def test_label_smoothing_keeps_tokens_the_corpus_never_shows_possible():
    # pattern_tokens only uses ids 0..50: plain cross-entropy drives the rest towards probability
    # zero, smoothing keeps them near its floor (a share of the smoothing mass).
    never_seen = torch.arange(51, VOCAB)
    inputs = torch.from_numpy(pattern_tokens(32).astype(np.int64))[None]
    log_probs = {}
    for smoothing in (0.0, 0.1):
        cfg = tiny_config(max_steps=120, lr=1e-2, eval_every=0, label_smoothing=smoothing)
        trainer = make_trainer(cfg=cfg)
        trainer.fit()
        with torch.no_grad():
            logits = trainer.model.eval()(inputs)  # (1, n_tokens, vocab)
        log_probs[smoothing] = torch.log_softmax(logits, -1)[..., never_seen].mean().item()
    assert log_probs[0.0] < math.log(0.1 / VOCAB) - 2  # plain: far below the smoothing floor
    assert log_probs[0.1] == pytest.approx(math.log(0.1 / VOCAB), abs=0.5)  # smoothed: at the floor


def test_bad_values_are_clear_errors():
    for lr in (0, -1e-3):
        with pytest.raises(ConfigError, match="--lr must be > 0"):
            tiny_config(lr=lr).check()
    with pytest.raises(ConfigError, match="--batch-size"):
        tiny_config(batch_size=0).check()
    for smoothing in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="--label-smoothing must be >= 0 and < 1"):
            tiny_config(label_smoothing=smoothing).check()
    with pytest.raises(ConfigError, match="--muon-ns-steps must be > 0"):
        tiny_config(muon_ns_steps=0).check()
    with pytest.raises(ConfigError, match="--muon-ns-steps must be below 100"):
        tiny_config(muon_ns_steps=100).check()


def test_replace_applies_none_like_any_value_and_names_unknown_fields():
    budgeted = TrainConfig(time_budget="10m", betas=(0.8, 0.9))
    plain = budgeted.replace(time_budget=None, max_steps=7)
    assert (plain.time_budget, plain.max_steps, plain.betas) == (None, 7, (0.8, 0.9))
    assert budgeted.time_budget == "10m"  # a copy
    with pytest.raises(ConfigError, match="max_step"):
        budgeted.replace(max_step=7)


def test_batch_or_context_larger_than_the_data_is_a_clear_error():
    tokens = pattern_tokens(400)
    with pytest.raises(DataError, match=r"fewer than one batch of 64 \(batch_size 64"):
        make_trainer(cfg=tiny_config(batch_size=64), tokens=tokens)
    big_context = GPTConfig(**{**TINY.to_dict(), "context_length": 512})
    with pytest.raises(DataError, match="context_length 512"):
        make_trainer(cfg=tiny_config(), model_cfg=big_context, tokens=tokens)
    with pytest.raises(ConfigError, match="longer than the model's context_length 32"):
        make_trainer(cfg=tiny_config(context_length=64))
    # 1,000 tokens, 900 to train on: the last 100 hold no window of 128 + 1 (make_trainer splits 90/10)
    mid_context = GPTConfig(**{**TINY.to_dict(), "context_length": 128})
    with pytest.raises(DataError, match=r"split has 100 tokens, .* \(raise --val-fraction, now 0.1,"):
        make_trainer(cfg=tiny_config(batch_size=2), model_cfg=mid_context, tokens=pattern_tokens(1000))


class Poison(TrainCallbacks):
    """Turns the weights into NaN after step ``at``, like a diverging run."""

    def __init__(self, model, at):
        self.model, self.at = model, at

    def on_step(self, info):
        if info["step"] == self.at:
            with torch.no_grad():
                self.model.tok_emb.weight.fill_(float("nan"))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    trainer = make_trainer(run, tiny_config(checkpoint_every=3))
    trainer.callbacks = Poison(trainer.model, at=7)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    assert str(info.value) == (
        "training loss became nan at step 8; stopped before updating the weights (lr 0.00205); the newest "
        "checkpoint checkpoints/step-000006 may already be diverging (older: checkpoints/step-000003): "
        f"resume with --resume {run} and a lower --lr than 0.005; if it diverges again, delete "
        f"{run}/checkpoints/step-000006 and resume from checkpoints/step-000003 with --resume {run} "
        "--fallback and a lower --lr than 0.005")
    assert (run / "latest").read_text().strip() == "checkpoints/step-000006"
    assert torch.isfinite(load_model(run).tok_emb.weight).all()


class Blowup(TrainCallbacks):
    """Makes the weights huge but finite after step ``at``: they pass the check before a save,
    and the next forward overflows (what --lr 1e30 --grad-clip 0 does)."""

    def __init__(self, model, at):
        self.model, self.at = model, at

    def on_step(self, info):
        if info["step"] == self.at:
            with torch.no_grad():
                self.model.tok_emb.weight.fill_(1e30)


def test_weights_that_give_nan_are_never_checkpointed_and_the_advice_works(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(checkpoint_every=3, eval_every=0, sample_every=0)
    trainer = make_trainer(run, cfg)
    trainer.callbacks = Blowup(trainer.model, at=6)
    with pytest.raises(NonFiniteLossError, match=(
            r"the model's output became nan after the update of step 6; stopped without saving .* the "
            r"newest checkpoint checkpoints/step-000003 may already be diverging \(no older one\): resume "
            r"with --resume .* and a lower --lr")):
        trainer.fit()
    assert (run / "latest").read_text().strip() == "checkpoints/step-000003"
    resumed = make_trainer(run, cfg.replace(lr=1e-3))  # what the message says to do
    resumed.resume()
    assert resumed.step == 3 and resumed.fit().step == 12


@pytest.mark.parametrize(("poisoned_step", "message", "kept"), [
    (6, r"validation loss became nan after the update of step 6; stopped without saving", 3),  # eval step
    (9, r"a weight became nan after the update of step 9; stopped without saving", 6),  # checkpoint only
])
def test_weights_broken_by_an_update_are_never_saved(tmp_path, poisoned_step, message, kept):
    trainer = make_trainer(tmp_path / "run", tiny_config(checkpoint_every=3, sample_every=0))
    trainer.callbacks = Poison(trainer.model, at=poisoned_step)
    with pytest.raises(NonFiniteLossError, match=message):
        trainer.fit()
    assert (tmp_path / "run" / "latest").read_text().strip() == f"checkpoints/step-{kept:06d}"
    assert not (tmp_path / "run" / "checkpoints" / f"step-{poisoned_step:06d}").exists()
    assert torch.isfinite(load_model(tmp_path / "run").tok_emb.weight).all()


def test_a_new_best_is_always_checkpointed_and_kept(tmp_path, monkeypatch):
    from gptsmith.train import trainer as trainer_module

    val_losses = iter([9.0, 5.0, 6.0, 4.0, 4.5, 7.0, 8.0])  # at steps 0, 2, 4, ..., 12: best at step 6
    monkeypatch.setattr(trainer_module, "evaluate", lambda *a, **k: (1.0, next(val_losses)))
    run = tmp_path / "run"
    trainer = make_trainer(run, tiny_config(eval_every=2, checkpoint_every=4, keep_last=1, sample_every=0))
    result = trainer.fit()
    assert result.best_val_loss == 4.0
    assert (run / "best").read_text().strip() == "checkpoints/step-000006"  # 6 is not a checkpoint step
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000006", "step-000012"]
    assert load_model(run / "checkpoints" / "step-000006").cfg == TINY


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import gptsmith.model.checkpoint as weights

    trainer = make_trainer(tmp_path / "run", tiny_config(checkpoint_every=3, max_steps=6))
    real_save = weights.atomic_save_safetensors

    def full_disk(tensors, path, metadata=None):
        if "step-000006" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, metadata)

    monkeypatch.setattr(weights, "atomic_save_safetensors", full_disk)
    with pytest.raises(CheckpointError, match=r"disk full \(No space left on device\); the previous "
                       r"checkpoint .*step-000003 is intact"):
        trainer.fit()
    run = tmp_path / "run"
    assert (run / "latest").read_text().strip() == "checkpoints/step-000003"
    assert not (run / "checkpoints" / "step-000006").exists()
    assert load_model(run).cfg == TINY


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_is_a_valid_configuration(name, request):
    from gptsmith.data.corpus import resolve_corpus
    from gptsmith.train.recipes import get_recipe

    recipe = get_recipe(name)
    cfg = TrainConfig.from_dict(recipe["train"], source=f"recipe {name}")
    cfg.check()
    model_cfg = GPTConfig.from_preset(recipe["preset"], **recipe["model"])
    assert cfg.warmup_steps < cfg.max_steps and model_cfg.context_length >= 64
    if cfg.data != "builtin":
        request.getfixturevalue("shared_data")  # the named corpora live there; skips when absent
        assert resolve_corpus(cfg.data).paths  # the named corpus is found


def test_gradients_are_clipped_before_the_optimizer_step(tmp_path):
    trainer = make_trainer(cfg=tiny_config(max_steps=3, grad_clip=0.05, eval_every=0, lr=1e-3))
    seen = []
    real_step = trainer.optimizer.step

    def step_and_record(*args, **kwargs):
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        per_tensor = torch.stack([torch.linalg.vector_norm(g) for g in grads])
        seen.append(float(torch.linalg.vector_norm(per_tensor)))
        return real_step(*args, **kwargs)

    trainer.optimizer.step = step_and_record
    norms = []

    class Record(TrainCallbacks):
        def on_step(self, info):
            norms.append(info["grad_norm"])

    trainer.callbacks = Record()
    trainer.fit()
    assert all(norm > 0.05 for norm in norms)  # an untrained model's gradients are larger than that
    assert seen == pytest.approx([0.05] * 3, rel=1e-3)  # what AdamW saw was clipped to the limit


def test_the_trainer_seeds_dropout_from_cfg_seed():
    dropout = GPTConfig(**{**TINY.to_dict(), "drop_rate": 0.2})

    def losses(seed: int, noise: int) -> list[float]:
        torch.manual_seed(0)
        model = GPTModel(dropout)  # the same weights every time
        torch.manual_seed(noise)  # whatever the global RNG was left at
        tokens = pattern_tokens()
        cfg = tiny_config(max_steps=3, eval_every=0, seed=seed)
        return Trainer(model, cfg, tokens[:10000], tokens[10000:]).fit().losses

    assert losses(seed=1, noise=5) == losses(seed=1, noise=99)
    assert losses(seed=1, noise=5) != losses(seed=2, noise=5)


def test_compiled_model_trains_without_graph_breaks(monkeypatch):
    if not hasattr(torch, "compile"):
        pytest.skip("this torch has no torch.compile")
    import functools

    # fullgraph=True makes any graph break an error; the eager backend skips code generation
    # (seconds, not the minute inductor needs on a CPU) but traces exactly what inductor would get.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager", fullgraph=True))
    torch._dynamo.reset()
    result = make_trainer(cfg=tiny_config(max_steps=2, eval_every=0, compile=True)).fit()
    assert len(result.losses) == 2 and all(math.isfinite(loss) for loss in result.losses)


def test_device_auto_selection(monkeypatch):
    from gptsmith.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="PyTorch sees no CUDA GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"


def test_a_sample_ends_at_endoftext_as_generate_does(tmp_path):
    from gptsmith.data.tokenizer import SimpleTokenizerV2

    words = SimpleTokenizerV2.from_text(" ".join(f"w{i}" for i in range(62)))  # 64 ids, like TINY
    trainer = make_trainer(tmp_path / "run", tiny_config(sample_prompt="w1 w2"), tokenizer=words)
    with torch.no_grad():  # every position's next token is <|endoftext|>, by far
        trainer.model.tok_emb.weight.zero_()
        trainer.model.tok_emb.weight[words.eot_id, 0] = 10.0
        trainer.model.final_norm.scale.zero_()
        trainer.model.final_norm.shift.zero_()
        trainer.model.final_norm.shift[0] = 10.0
    assert trainer._sample_text() == "w1 w2"  # it stopped there (it went on with <|endoftext|> x 40)
