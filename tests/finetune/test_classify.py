"""The classifier model (last real token, no vocabulary head) and ``finetune_classifier`` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from classify_helpers import labelled_rows, nan_classifier, tiny_base, write_csv

from gptsmith.errors import CheckpointError, ConfigError, GptsmithError, NonFiniteError
from gptsmith.finetune.base import StepRunner, parse_trainable, set_trainable
from gptsmith.finetune.class_model import GPTClassifier, batch_order, pad_batch
from gptsmith.finetune.classifier import Classifier
from gptsmith.finetune.classify import ClassifyConfig, finetune_classifier
from gptsmith.model.checkpoint import load_model_dir
from gptsmith.model.gpt import GPTConfig, GPTModel
from gptsmith.train.evaluation import NonFiniteLossError


def _classifier(seed: int = 0) -> GPTClassifier:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=50, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    return GPTClassifier(GPTModel(cfg), 3).eval()


def test_prediction_reads_the_last_real_token_and_padding_changes_nothing():
    model = _classifier()
    rows = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    ids, lengths = pad_batch(rows)
    assert ids.shape == (3, 6) and lengths.tolist() == [3, 6, 1]
    with torch.no_grad():
        batched = model(ids, lengths)  # (3, 3)
        alone = torch.cat([model(torch.tensor([r]), torch.tensor([len(r)])) for r in rows])
        # the hidden state at the last real token, computed by the plain GPT forward path
        gpt = model.gpt
        gpt.out_head = torch.nn.Identity()
        expected = torch.stack([gpt(torch.tensor([r]))[0, -1] for r in rows])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched, model.head(expected), rtol=0, atol=1e-5)


def test_the_vocabulary_head_is_never_computed():
    model = _classifier()

    def refuse(*args, **kwargs):
        raise AssertionError("the vocabulary head was computed")

    model.gpt.out_head.forward = refuse
    ids, lengths = pad_batch([[1, 2, 3], [4]])
    loss = model(ids, lengths).sum()
    loss.backward()


def test_batches_group_similar_lengths_and_cover_every_text_once():
    lengths = [1 + (i * 7) % 30 for i in range(100)]
    batches = batch_order(lengths, 8, shuffle=True, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(100))
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    random_batches = [list(range(i, min(i + 8, 100))) for i in range(0, 100, 8)]
    assert padded < sum(max(lengths[i] for i in b) * len(b) for b in random_batches)


def test_trainable_choices():
    model = _classifier()
    set_trainable(model, model.gpt, "last-blocks:1", new_parts=[model.head])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters()
                         if n.startswith(("gpt.trf_blocks.1.", "gpt.final_norm.", "head."))}
    set_trainable(model, model.gpt, "head", new_parts=[model.head])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    assert parse_trainable("all") is None
    with pytest.raises(Exception, match="only 2 blocks"):
        set_trainable(model, model.gpt, "last-blocks:3")


def test_finetune_learns_saves_and_reloads(tmp_path):
    base = tiny_base(tmp_path / "base")
    data = write_csv(tmp_path / "data.csv", labelled_rows(30))
    result = finetune_classifier(data, checkpoint=base, out=tmp_path / "clf", trainable="all", lr=3e-3,
                                 epochs=4, batch_size=8, seed=1)
    assert result.test is not None and result.test.n == 12 and result.test.accuracy >= 0.9
    evals = [r for r in result.metrics if r["kind"] == "eval"]
    assert len(evals) == 4 and evals[-1]["train_loss"] < evals[0]["train_loss"]
    out = tmp_path / "clf"
    for name in ("config.json", "model.safetensors", "classifier.safetensors", "metrics.jsonl",
                 "training.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["classifier"]["labels"] == ["ham", "spam"]
    assert config["classifier"]["head"]["n_classes"] == 2
    assert isinstance(load_model_dir(out), GPTModel)  # every command can load it as a language model
    texts = ["win cash now", "see you at lunch", "free prize claim", "thanks mum"]
    labels, probs = result.classifier.predict(texts)
    loaded = Classifier.load(out, device="cpu")
    assert loaded.predict(texts) == (labels, pytest.approx(probs, abs=1e-5))
    assert labels == ["spam", "ham", "spam", "ham"] and all(0.5 <= p <= 1 for p in probs)
    with pytest.raises(GptsmithError, match=r"^texts\[1\] is empty: there is nothing to classify"):
        loaded.predict(["win cash", " \n"])  # as the command refuses it: a label for no text means nothing
    with pytest.raises(CheckpointError, match="a language model, not a classifier"):
        Classifier.load(base)


def test_lora_adapter_only_loads_on_its_base(tmp_path):
    base = tiny_base(tmp_path / "base")
    data = write_csv(tmp_path / "data.csv", labelled_rows(30))
    result = finetune_classifier(data, checkpoint=base, out=tmp_path / "adapter", lora_rank=4, lr=1e-2,
                                 epochs=3, save_adapter_only=True, seed=2)
    out = tmp_path / "adapter"
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    texts = ["win cash now", "see you at lunch"]
    labels, probs = result.classifier.predict(texts)
    assert Classifier.load(out, device="cpu").predict(texts) == (labels, pytest.approx(probs, abs=1e-5))
    for batch_size in (0, -1, 1.5):
        with pytest.raises(GptsmithError, match="batch_size must be a whole number >= 1"):
            result.classifier.predict(texts, batch_size=batch_size)
    with pytest.raises(GptsmithError, match=r"texts\[1\] is a NoneType, not a str"):
        result.classifier.predict(["fine", None])
    trainable = result.metrics  # the LoRA run trained: its loss moved
    losses = [r["loss"] for r in trainable if r["kind"] == "train"]
    assert min(losses[-3:]) < losses[0]
    moved = base.rename(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="is a LoRA adapter for the base model .* no longer exists"):
        Classifier.load(out, device="cpu")
    moved.rename(base)
    tiny_base(base, seed=1)  # the base retrained in its folder: the same shapes, other weights
    with pytest.raises(CheckpointError, match="whose weights have changed since the adapter was trained"):
        Classifier.load(out, device="cpu")


@pytest.mark.parametrize("bad, message", [
    (dict(dtype="foo"), "--dtype: unknown dtype 'foo'"),
    (dict(weight_decay=-1.0), "--weight-decay must be a number >= 0, got -1.0"),
    (dict(lr="x"), "--lr must be a number > 0, got 'x'"),
    (dict(lora_rank="x"), "--lora-rank must be a whole number >= 0, got 'x'"),
    (dict(eval_every=1.5), "--eval-every must be a whole number >= 0, got 1.5"),
])
def test_bad_settings_are_named_before_anything_loads(bad, message):
    with pytest.raises(ConfigError, match=message):
        ClassifyConfig(**bad)


def test_a_non_finite_loss_stops_the_step_before_the_update():
    model = GPTModel(GPTConfig(vocab_size=40, context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    runner = StepRunner(model, lr=1e-3, max_steps=10, device=torch.device("cpu"), dtype="fp32",
                        warmup_steps=0, min_lr=1e-3)
    ids = torch.randint(0, 40, (2, 8))
    loss = runner.run(lambda: model(ids).logsumexp(-1).mean())
    assert torch.isfinite(torch.tensor(loss)) and runner.optimizer.param_groups[0]["lr"] == 1e-3  # constant
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match=r"the training loss became nan at step 2 \(lower --lr"):
        runner.run(lambda: model(ids).sum() * float("nan"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing updated
    assert runner.step == 1


def test_a_diverging_finetune_saves_no_classifier(tmp_path):
    base = tiny_base(tmp_path / "base")
    data = write_csv(tmp_path / "sms.csv", labelled_rows(30))
    out = tmp_path / "clf"
    with pytest.raises(NonFiniteLossError, match="lower --lr, now 1e\\+30"):
        finetune_classifier(data, checkpoint=base, out=out, lr=1e30, trainable="all")
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()


def test_one_step_at_a_huge_lr_stops_at_the_validation_loss_and_writes_no_nan(tmp_path):
    base = tiny_base(tmp_path / "base")
    data = write_csv(tmp_path / "sms.csv", labelled_rows(30))
    out = tmp_path / "clf"
    with pytest.raises(NonFiniteLossError, match=r"^the validation loss became (nan|inf) after step 1; "
                       r"stopped before saving \(lower --lr, now 1e\+30\)$"):
        finetune_classifier(data, checkpoint=base, out=out, lr=1e30, max_steps=1, trainable="all")
    assert not out.exists()  # nothing was written before the first evaluation: not even an empty folder


def test_without_validation_or_test_texts_the_broken_weights_are_caught_before_saving(tmp_path):
    base = tiny_base(tmp_path / "base")
    data = write_csv(tmp_path / "sms.csv", labelled_rows(30))
    out = tmp_path / "clf"
    with pytest.raises(NonFiniteLossError, match=r"^(a weight|the model's output) became non-finite \(nan or "
                       r"inf\) after step 1; stopped before saving \(lower --lr, now 1e\+30\)$"):
        finetune_classifier(data, checkpoint=base, out=out, lr=1e30, max_steps=1, trainable="all",
                            split="100/0/0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "sms.csv"]  # nothing half-written


def test_a_base_with_non_finite_outputs_is_refused_before_training(tmp_path):
    base = tiny_base(tmp_path / "base", nan_weights=True)
    data = write_csv(tmp_path / "sms.csv", labelled_rows(30))
    with pytest.raises(NonFiniteError) as info:
        finetune_classifier(data, checkpoint=base, out=tmp_path / "clf")
    assert str(info.value).startswith(f"the base model {base} gives non-finite outputs (nan or inf): its "
                                      "weights are broken")
    assert "--lr" not in str(info.value)  # no learning rate mends a broken base
    assert not (tmp_path / "clf").exists()


def test_a_label_with_a_single_training_text_is_noted(tmp_path):
    class Notes:
        notes: list[str] = []

        def on_start(self, info):
            Notes.notes = info["notes"]

        def on_step(self, info):
            pass

        def on_eval(self, info):
            pass

    base = tiny_base(tmp_path / "base")
    rows = labelled_rows(30) + [("call the office", "work")]
    data = write_csv(tmp_path / "data.csv", rows)
    finetune_classifier(data, checkpoint=base, split="100/0/0", max_steps=1, callbacks=Notes())
    assert "1 label(s) have a single training text ('work'): add texts for them, or check --label-column" \
        in Notes.notes


def test_a_classifier_with_nan_weights_refuses_to_predict(tmp_path):
    classifier = Classifier.load(nan_classifier(tmp_path / "clf"), device="cpu")
    with pytest.raises(NonFiniteError, match=r"^the classifier's outputs are not finite \(nan\): its weights "
                       "are broken"):
        classifier.predict(["win cash now"])
    assert classifier.predict([]) == ([], [])  # nothing to run: nothing to refuse
