"""Training on the tokens a corpus uses (train/vocab_trim.py): the trimmed loss is the full-vocabulary
loss exactly, the unused rows stay tied, and a trimmed run learns and resumes exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_resume import assert_stop_at_6_resumes_bit_identically, resume_config
from training_helpers import TINY, VOCAB, make_trainer, pattern_tokens, tiny_config

from gptsmith.errors import DataError
from gptsmith.model.gpt import GPTModel
from gptsmith.train import vocab_trim
from gptsmith.train.evaluation import calc_loss_loader
from gptsmith.train.vocab_trim import TrimmedVocab, used_token_ids


def test_used_token_ids_are_the_sorted_ids_present_counted_in_chunks(monkeypatch):
    monkeypatch.setattr(vocab_trim, "COUNT_CHUNK", 3)  # several chunks, one partial
    tokens = np.array([5, 1, 5, 9, 1, 0, 9], dtype=np.uint16)
    assert used_token_ids(tokens, 10).tolist() == [0, 1, 5, 9]


def test_counting_stops_once_every_id_is_seen(monkeypatch):
    monkeypatch.setattr(vocab_trim, "COUNT_CHUNK", 10)
    tokens = np.concatenate([np.arange(10), [99]])  # never read: the first chunk already uses them all
    assert used_token_ids(tokens, 10).tolist() == list(range(10))


def test_ids_beyond_the_vocabulary_name_the_model_vocabulary():
    with pytest.raises(DataError, match=r"outside 0\.\.9.*vocab_size"):
        used_token_ids(np.array([1, 10]), 10)


def test_a_corpus_that_uses_every_token_has_nothing_to_trim():
    assert TrimmedVocab.from_tokens(np.arange(10), 10) is None


def test_rows_and_columns_map_used_tokens_then_the_shared_row():
    trim = TrimmedVocab.from_tokens(np.array([7, 2, 7, 4]), 8)
    assert trim.rows.tolist() == [2, 4, 7, 0]  # used ids, then the lowest unused id
    assert (trim.shared_id, trim.n_used, trim.n_unused) == (0, 3, 5)
    assert trim.unused.tolist() == [0, 1, 3, 5, 6]
    assert trim.column[torch.tensor([2, 4, 7, 0, 5])].tolist() == [0, 1, 2, 3, 3]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_trimmed_loss_and_gradients_equal_the_full_vocabulary_cross_entropy(smoothing):
    """With the unused rows tied, the loss over all rows is computed from the used ones and one."""
    generator = torch.Generator().manual_seed(0)
    vocab, dim = 300, 16
    trim = TrimmedVocab.from_tokens(torch.randperm(vocab, generator=generator)[:90].numpy(), vocab)
    weight = torch.randn(vocab, dim, generator=generator)
    trim.tie_rows(weight)
    hidden = torch.randn(40, dim, generator=generator)
    targets = trim.rows[:-1][torch.randint(0, trim.n_used, (40,), generator=generator)]

    full_weight = weight.clone().requires_grad_()
    full_hidden = hidden.clone().requires_grad_()
    full = F.cross_entropy(full_hidden @ full_weight.T, targets, label_smoothing=smoothing)
    full.backward()

    trim_weight = weight.clone().requires_grad_()
    trim_hidden = hidden.clone().requires_grad_()
    trimmed = trim.cross_entropy(trim_hidden @ trim_weight[trim.rows].T, targets, smoothing)
    trimmed.backward()

    torch.testing.assert_close(trimmed, full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(trim_hidden.grad, full_hidden.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(trim_weight.grad[trim.rows[:-1]], full_weight.grad[trim.rows[:-1]],
                               rtol=1e-4, atol=1e-6)
    # The shared row's gradient is the sum of what every unused row gets in the full loss.
    torch.testing.assert_close(trim_weight.grad[trim.shared_id], full_weight.grad[trim.unused].sum(0),
                               rtol=1e-4, atol=1e-6)


def test_the_model_computes_only_the_rows_asked_for():
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    ids = torch.randint(0, VOCAB, (2, 7))
    rows = torch.tensor([5, 0, 63, 5])
    with torch.no_grad():
        torch.testing.assert_close(model(ids, head_rows=rows), model(ids)[..., rows])


def trimmed_tokens() -> np.ndarray:
    tokens = pattern_tokens()
    assert len(np.unique(tokens)) < VOCAB  # the pattern leaves tokens 51..63 unused
    return tokens


@pytest.mark.parametrize("tie_weights", [True, False])  # untied: the head's rows only
def test_a_trimmed_run_learns_keeps_the_unused_rows_tied_and_scores_as_it_trained(tie_weights):
    model_cfg = dataclasses.replace(TINY, tie_weights=tie_weights)
    trainer = make_trainer(cfg=tiny_config(trim_vocab=True, max_steps=30, eval_every=30),
                           tokens=trimmed_tokens(), model_cfg=model_cfg)
    trim = trainer.trimmed_vocab
    assert trim is not None and trainer.run_info["trim_vocab"] == {"used_tokens": trim.n_used,
                                                                   "vocab_size": VOCAB}
    result = trainer.fit()
    assert result.losses[-1] < result.losses[0] - 1.0
    weight = trainer.model.out_head.weight.detach()
    assert torch.equal(weight[trim.unused], weight[trim.shared_id].expand(trim.n_unused, -1))
    # The loss the run trained on is the full model's loss: the same batch scored both ways.
    inputs, targets = next(iter(trainer.val_eval))
    model = trainer.model.eval()
    with torch.no_grad():
        trimmed = trim.cross_entropy(model(inputs, head_rows=trim.rows).flatten(0, 1), targets.flatten())
    assert trimmed.item() == pytest.approx(calc_loss_loader([(inputs, targets)], model), rel=1e-5)


def test_a_new_trimmed_run_starts_the_unused_rows_at_zero_and_keeps_the_used_ones():
    torch.manual_seed(1)  # as make_trainer does before building its model
    before = GPTModel(TINY).out_head.weight.detach().clone()
    trainer = make_trainer(cfg=tiny_config(trim_vocab=True), tokens=trimmed_tokens())
    weight, trim = trainer.model.out_head.weight.detach(), trainer.trimmed_vocab
    assert bool((weight[trim.unused] == 0).all())
    used = trim.rows[:-1]
    assert torch.equal(weight[used], before[used]) and trim.n_used + trim.n_unused == VOCAB


def test_trim_vocab_is_off_by_default_and_changes_nothing_then():
    plain = make_trainer(cfg=tiny_config(max_steps=4), tokens=trimmed_tokens())
    assert plain.trimmed_vocab is None and "trim_vocab" not in plain.run_info


def test_a_trimmed_run_resumes_bit_identically(tmp_path):
    assert_stop_at_6_resumes_bit_identically(tmp_path, resume_config(trim_vocab=True))


def test_trim_vocab_must_be_a_boolean():
    from gptsmith.errors import ConfigError

    with pytest.raises(ConfigError, match="--trim-vocab must be true or false"):
        tiny_config(trim_vocab="yes").check()

