"""The learning-rate schedule, weight-decay groups and the optimizers (AdamW, Muon + AdamW)."""

from __future__ import annotations

import pytest
import torch
from training_helpers import TINY, make_trainer, tiny_config

from gptsmith.errors import ConfigError
from gptsmith.model.gpt import GPTConfig, GPTModel
from gptsmith.train.schedule import MuonAdamW, build_optimizer, lr_at_step, muon_matrices, param_groups


def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    lrs = [lr_at_step(s, peak_lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=20) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert 0.98 < lrs[4] < 1.0  # the decay starts at the first step after the peak, not a second peak
    assert lrs[11] == pytest.approx(0.55)  # halfway through the 16 decay steps: (peak + floor) / 2
    assert lrs[19] == pytest.approx(0.1)  # the run's last step (max_steps - 1) takes the floor
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:], strict=False))


def test_weight_decay_only_on_linear_matrices():
    model = GPTModel(TINY)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "trf_blocks.0.att.qkv.weight" in decayed and "trf_blocks.1.ff.layers.2.weight" in decayed
    assert not any(n.endswith(("bias", "scale", "shift")) or "emb" in n for n in decayed)
    n_params = len(list(model.parameters()))  # the tied head is one tensor, counted once
    assert len(decay["params"]) + len(no_decay["params"]) == n_params


def test_muon_takes_the_block_matrices_and_adamw_everything_else():
    model = GPTModel(GPTConfig(**{**TINY.to_dict(), "tie_weights": False}))
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = sorted(names[id(p)] for p in muon_matrices(model))
    assert in_muon and all(n.startswith("trf_blocks.") and n.endswith(".weight") for n in in_muon)
    assert len(in_muon) == 4 * TINY.n_layers  # qkv, out_proj, and the MLP's two matrices per block
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1, optimizer="muon")
    assert isinstance(optimizer, MuonAdamW)
    groups = [[id(p) for p in g["params"]] for g in optimizer.param_groups]
    assert sorted(i for g in groups for i in g) == sorted(names)  # every parameter, exactly once
    assert names[id(model.out_head.weight)] not in in_muon and "tok_emb.weight" not in in_muon


def test_muon_steps_are_orthogonalised_and_follow_the_schedule_lr():
    """A first Muon step moves a matrix by ~0.2 x lr per entry (rms), whatever its gradient's size;
    AdamW's first step moves every entry by lr. Setting each group's lr (as the trainer does) sets both."""
    torch.manual_seed(0)
    model = GPTModel(TINY)
    optimizer = build_optimizer(model, lr=1.0, weight_decay=0.0, optimizer="muon")
    for group in optimizer.param_groups:
        group["lr"] = 1e-3
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, TINY.vocab_size, (8, 16))
    (model(ids).float().square().mean() * 1e3).backward()
    gradient = torch.linalg.svdvals(dict(model.named_parameters())["trf_blocks.0.ff.layers.0.weight"].grad)
    optimizer.step()
    matrix = "trf_blocks.0.ff.layers.0.weight"
    moved = dict(model.named_parameters())
    step_rms = (moved[matrix] - before[matrix]).pow(2).mean().sqrt().item() / 1e-3
    assert 0.1 < step_rms < 0.35
    # Orthogonalised: the step's singular values are alike (the gradient's spread over a factor ~12).
    singular_values = torch.linalg.svdvals((moved[matrix] - before[matrix]).detach())
    assert singular_values.max() / singular_values.median() < 2 < gradient.max() / gradient.median()
    norm_shift = (moved["final_norm.shift"] - before["final_norm.shift"]).abs()
    assert torch.allclose(norm_shift[norm_shift > 0], torch.tensor(1e-3), rtol=0.01)  # AdamW: ±lr


def test_without_torch_muon_recipes_fall_back_to_adamw_and_asking_for_muon_is_clear(monkeypatch):
    from gptsmith.train.recipes import get_recipe

    assert get_recipe("default")["train"]["optimizer"] == "muon"
    monkeypatch.delattr(torch.optim, "Muon")
    assert get_recipe("default")["train"]["optimizer"] == "adamw"
    with pytest.raises(ConfigError, match=r"needs PyTorch 2.9 or later .*--optimizer adamw"):
        build_optimizer(GPTModel(TINY), lr=1e-3, weight_decay=0.0, optimizer="muon")


def test_fewer_newton_schulz_steps_orthogonalise_less_exactly(tmp_path):
    """``muon_ns_steps`` reaches torch's Muon: the same gradient, stepped with 3 iterations
    instead of 5, gives an update whose singular values are spread wider (less orthogonal)."""
    trainer = make_trainer(tmp_path / "run", tiny_config(max_steps=1, optimizer="muon", muon_ns_steps=3))
    assert {g["ns_steps"] for g in trainer.optimizer.muon.param_groups} == {3}
    spreads = {}
    for ns_steps in (3, 5):
        torch.manual_seed(0)
        model = GPTModel(TINY)
        optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0, optimizer="muon",
                                    muon_ns_steps=ns_steps)
        matrix = model.trf_blocks[0].ff.layers[0].weight
        before = matrix.detach().clone()
        torch.manual_seed(1)
        (model(torch.randint(0, TINY.vocab_size, (8, 16))).float().square().mean() * 1e3).backward()
        optimizer.step()
        singular_values = torch.linalg.svdvals(matrix.detach() - before)
        spreads[ns_steps] = (singular_values.max() / singular_values.min()).item()
    assert spreads[5] < spreads[3]


def test_training_with_muon_lowers_the_loss(tmp_path):
    result = make_trainer(tmp_path / "run", tiny_config(max_steps=30, eval_every=30, optimizer="muon")).fit()
    assert result.losses[-1] < result.losses[0] - 1.0


@pytest.mark.parametrize("shape", [(48, 16), (16, 48)])
def test_fp32_newton_schulz_is_torchs_iteration_without_the_bf16_rounding(shape):
    from torch.optim import _muon

    from gptsmith.train.schedule import newton_schulz_fp32

    torch.manual_seed(0)
    update = torch.randn(*shape) * torch.logspace(0, 2, shape[1])  # singular values spread ~100x
    args = ((3.4445, -4.7750, 2.0315), 5, 1e-7)
    ours = newton_schulz_fp32(update, *args)
    assert ours.dtype == torch.float32 and ours.shape == update.shape
    theirs = _muon._zeropower_via_newtonschulz(update, *args).float()
    torch.testing.assert_close(ours, theirs, atol=0.03, rtol=0.05)
    singular_values = torch.linalg.svdvals(ours)
    assert 0.5 < singular_values.min() and singular_values.max() < 1.5  # orthogonalised


@pytest.mark.parametrize("native_bf16", [True, False])
def test_muon_orthogonalises_in_fp32_on_a_cpu_without_native_bf16(monkeypatch, native_bf16):
    from torch.optim import _muon

    from gptsmith.train import schedule

    monkeypatch.setattr(schedule, "cpu_has_fast_bf16", lambda: native_bf16)
    torch_own = _muon._zeropower_via_newtonschulz
    real_fp32 = schedule.newton_schulz_fp32
    calls = []
    monkeypatch.setattr(schedule, "newton_schulz_fp32", lambda *args: calls.append(1) or real_fp32(*args))
    torch.manual_seed(0)
    model = GPTModel(TINY)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0, optimizer="muon")
    matrix = model.trf_blocks[0].ff.layers[0].weight
    before = matrix.detach().clone()
    model(torch.randint(0, TINY.vocab_size, (2, 8))).float().square().mean().backward()
    optimizer.step()
    assert _muon._zeropower_via_newtonschulz is torch_own  # swapped back after the step
    assert len(calls) == (0 if native_bf16 else len(muon_matrices(model)))
    assert not torch.equal(matrix, before)
