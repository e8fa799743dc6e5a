"""The run directory when things go wrong: full disks, unwritable files, file modes, pruning,
the `best` pointer and samples.txt across resumes (tiny models, real file-system failures)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import signal
import stat
from types import SimpleNamespace

import pytest
import torch
from training_helpers import (
    TINY,
    make_trainer,
    tiny_config,
)

from gptsmith.data.tokenizer import SimpleTokenizerV2
from gptsmith.errors import CheckpointError, ConfigError, StorageError
from gptsmith.model.checkpoint import load_model, save_model
from gptsmith.model.gpt import GPTModel
from gptsmith.model.hf_gpt2 import export_hf
from gptsmith.storage import (
    atomic_save_safetensors,
    atomic_torch_save,
    atomic_write_text,
    write_failure_reason,
)
from gptsmith.train import checkpointing as ckpt
from gptsmith.train import run_log

WORDS = SimpleTokenizerV2.from_text(" ".join(f"w{i}" for i in range(62)))  # 64 ids, like TINY


@contextlib.contextmanager
def file_size_limit(max_bytes: int):
    """Make writes past ``max_bytes`` fail with EFBIG, as on a full disk (``ulimit -f``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


# --- a full disk -------------------------------------------------------------------------------


def test_every_writer_reports_a_real_full_disk_as_disk_full(tmp_path):
    tensors = {"w": torch.zeros(50_000)}  # 200 kB: past the limit
    writers = {
        "torch.save": lambda: atomic_torch_save(tensors, tmp_path / "state.pt"),  # a RuntimeError
        "safetensors": lambda: atomic_save_safetensors(tensors, tmp_path / "w.st"),  # a SafetensorError
        "python": lambda: atomic_write_text(tmp_path / "big.txt", "x" * 200_000),  # an OSError
    }
    for name, write in writers.items():
        with file_size_limit(50_000), pytest.raises(Exception) as info:  # noqa: B017 (three kinds)
            write()
        assert write_failure_reason(info.value, tmp_path) == ("disk full (File too large)", True), name
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_a_real_full_disk_while_saving_a_model_is_one_line_and_leaves_no_half_directory(tmp_path):
    model = GPTModel(TINY)
    save_model(model, tmp_path / "old")
    size = (tmp_path / "old" / "model.safetensors").stat().st_size
    for target in (tmp_path / "new" / "model", tmp_path / "old"):  # a new directory, an existing model
        with file_size_limit(size // 2), pytest.raises(StorageError) as info:
            save_model(GPTModel(TINY), target)
        message = str(info.value)
        weights = target / "model.safetensors"
        with file_size_limit(size // 2), pytest.raises(StorageError, match="disk full .*save it again"):
            export_hf(GPTModel(TINY), tmp_path / "hf" / "model")  # gptsmith convert --to hf
        assert f"cannot write {weights}: disk full (File too large); free some space and save it again" \
            in message
        assert "\n" not in message
    assert not (tmp_path / "new").exists() and not (tmp_path / "hf").exists()  # what the saves made is gone
    assert load_model(tmp_path / "old").cfg == TINY  # the model that was there is untouched


def test_a_real_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    make_trainer(run, tiny_config(checkpoint_every=3, max_steps=3, eval_every=0)).fit()
    state_size = (run / "checkpoints/step-000003/training_state.pt").stat().st_size
    trainer = make_trainer(run, tiny_config(checkpoint_every=3, max_steps=6, eval_every=0))
    trainer.resume()
    with file_size_limit(state_size // 2), pytest.raises(CheckpointError) as info:
        trainer.fit()  # the training state is written first: torch.save fails
    message = str(info.value)
    assert "step-000006: disk full (File too large); the previous checkpoint" in message
    assert "step-000003 is intact (free some space, then resume with --resume" in message
    assert "\n" not in message
    assert ckpt.read_pointer(run, "latest") == "checkpoints/step-000003"
    assert not (run / "checkpoints/step-000006").exists()  # the partial directory is gone
    assert load_model(run).cfg == TINY


def test_disk_full_found_by_free_space_when_the_error_has_no_errno(tmp_path, monkeypatch):
    import gptsmith.storage as storage

    failure = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert write_failure_reason(failure, tmp_path) == (str(failure), False)
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: SimpleNamespace(free=4096))
    assert write_failure_reason(failure, tmp_path) == ("disk full", True)
    assert write_failure_reason(OSError(errno.ENOSPC, "No space"), tmp_path)[1]


@pytest.mark.parametrize("name", ["metrics.jsonl", "samples.txt", "loss.png", "best", "run.json"])
def test_a_run_file_that_cannot_be_written_is_a_one_line_error(tmp_path, name):
    run = tmp_path / "run"
    (run / name).mkdir(parents=True)  # a directory in the file's place: every write to it fails
    trainer = make_trainer(run, tiny_config(max_steps=2, eval_every=2), tokenizer=WORDS)
    with pytest.raises(StorageError) as info:
        trainer.fit()
    message = str(info.value)
    assert message.startswith(f"cannot write {run / name}: Is a directory; ") and "\n" not in message


# --- file modes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_run_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "latest", "checkpoints/step-000001\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "latest").stat().st_mode) == mode


def test_a_whole_run_directory_is_readable_by_others_under_umask_022(tmp_path):
    old = os.umask(0o022)
    try:
        make_trainer(tmp_path / "run", tiny_config(max_steps=2, eval_every=2)).fit()
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {"run.json", "latest", "best", "model.safetensors", "config.json", "loss.png",
            "training_state.pt"} <= {p.name for p in files}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o644" for p in files}


# --- pruning and the best pointer ----------------------------------------------------------------


def test_incomplete_checkpoints_never_push_out_good_ones(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / ckpt.checkpoint_name(step)).mkdir(parents=True)
        (tmp_path / ckpt.checkpoint_name(step) / "config.json").write_text("{}")
    for step in (5, 8):  # saves that were interrupted: no config.json
        (tmp_path / ckpt.checkpoint_name(step)).mkdir(parents=True)
    ckpt.write_pointer(tmp_path, "latest", ckpt.checkpoint_name(6))
    ckpt.write_pointer(tmp_path, "best", ckpt.checkpoint_name(2))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000002", "step-000004", "step-000006"]
    ckpt.prune_checkpoints(tmp_path, keep_last=2)
    # step 4 is among the last two good ones; the dead leftover 5 goes, 8 (newer) may be in progress
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000002", "step-000004", "step-000006", "step-000008"]


def test_fallback_restores_best_from_the_resumed_state_and_keeps_that_checkpoint(tmp_path, monkeypatch):
    from gptsmith.train import trainer as trainer_module

    run = tmp_path / "run"
    cfg = tiny_config(max_steps=6, eval_every=2, checkpoint_every=2, keep_last=2, sample_every=0)
    val_losses = iter([9.0, 5.0, 4.0, 3.0])  # steps 0, 2, 4, 6: best at 6 = latest
    monkeypatch.setattr(trainer_module, "evaluate", lambda *a, **k: (1.0, next(val_losses)))
    make_trainer(run, cfg).fit()
    assert ckpt.read_pointer(run, "best") == ckpt.read_pointer(run, "latest") == "checkpoints/step-000006"
    (run / "checkpoints/step-000006/model.safetensors").write_bytes(b"torn")

    val_losses = iter([4.5, 5.0])  # the resumed run's steps 6 and 8: no new best
    resumed = make_trainer(run, cfg.replace(max_steps=8, keep_last=1))
    resumed.resume(fallback=True)
    assert resumed.step == 4 and resumed.best_step == 4
    assert ckpt.read_pointer(run, "best") == "checkpoints/step-000004"
    resumed.fit()
    assert ckpt.read_pointer(run, "best") == "checkpoints/step-000004"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "corrupt-step-000006", "step-000004", "step-000008"]  # the best survives keep_last=1


def test_best_pointer_is_dropped_when_its_checkpoint_is_gone(tmp_path):
    ckpt.write_pointer(tmp_path, "best", ckpt.checkpoint_name(4))
    ckpt.restore_best_pointer(tmp_path, 4)  # checkpoints/step-000004 does not exist
    assert not (tmp_path / "best").exists()


# --- samples.txt -------------------------------------------------------------------------------


def test_samples_after_the_resumed_step_are_dropped(tmp_path):
    for step in (1, 2, 3, 4):
        run_log.append_sample(tmp_path, step, step * 128, f"text of step {step}\n--- not a header")
    run_log.truncate_samples(tmp_path, 2)
    text = (tmp_path / "samples.txt").read_text()
    assert text == ("--- step 1 (tokens seen 128)\ntext of step 1\n--- not a header\n"
                    "--- step 2 (tokens seen 256)\ntext of step 2\n--- not a header\n")


def test_samples_kept_on_resume_are_unchanged_byte_for_byte(tmp_path):
    # A sample of a Windows corpus holds "\r" (text mode would make it "\n"), or U+2028; a kill in
    # the middle of an append can leave a torn character behind, which is dropped with its step.
    run_log.append_sample(tmp_path, 1, 64, "one\r two\u2028three\r\nfour")
    kept = (tmp_path / "samples.txt").read_bytes()
    with open(tmp_path / "samples.txt", "ab") as handle:
        handle.write("--- step 2 (tokens seen 128)\n\u65e5".encode()[:-1])
    run_log.truncate_samples(tmp_path, 1)
    assert (tmp_path / "samples.txt").read_bytes() == kept


# --- what a stopped run has to go on from -----------------------------------------------------


def test_resume_advice_names_what_a_stopped_run_has(tmp_path):
    from gptsmith.train.run_dir import resume_advice

    (tmp_path / "run.json").write_text("{}")
    assert resume_advice(tmp_path) == (
        f"{tmp_path} has no checkpoint (the run stopped before its first one was saved): start it again "
        f"with `gptsmith train --out {tmp_path} --overwrite` and the same settings")
    (tmp_path / ckpt.checkpoint_name(2)).mkdir(parents=True)
    (tmp_path / ckpt.checkpoint_name(2) / "config.json").write_text("{}")
    ckpt.write_pointer(tmp_path, "latest", ckpt.checkpoint_name(2))
    assert resume_advice(tmp_path) == (f"checkpoint {tmp_path}/checkpoints/step-000002 is kept (continue "
                                       f"with: gptsmith train --resume {tmp_path})")
    ckpt.write_pointer(tmp_path, "latest", ckpt.checkpoint_name(4))  # gone: --resume finds step 2
    assert resume_advice(tmp_path) == (f"checkpoint {tmp_path}/checkpoints/step-000002 is kept (continue "
                                       f"with: gptsmith train --resume {tmp_path})")
    (tmp_path / ckpt.checkpoint_name(4)).mkdir()  # there, but incomplete: --fallback skips it
    assert resume_advice(tmp_path).endswith(f"(continue from the newest good one with: gptsmith train "
                                            f"--resume {tmp_path} --fallback)")


def test_damaged_metrics_lines_are_skipped_when_resuming(tmp_path):
    good = [{"kind": "train", "step": s, "loss": 5.0 - s} for s in (1, 2, 3)]
    text = "".join(json.dumps(r) + "\n" for r in good).encode()
    damage = b'\xff\xfe not utf-8\n[1, 2]\n{"step": "x"}\n{"st'  # the last: torn by a kill
    (tmp_path / run_log.METRICS_FILE).write_bytes(text + damage)
    assert run_log.read_metrics(tmp_path) == good
    run_log.truncate_metrics(tmp_path, 2)  # what --resume does: keep what the checkpoint covers
    assert run_log.read_metrics(tmp_path) == good[:2]


def test_a_new_run_never_writes_into_an_old_one(tmp_path):
    run = tmp_path / "run"
    make_trainer(run_dir=run).fit()
    before = (run / run_log.METRICS_FILE).read_text()
    with pytest.raises(ConfigError, match="already holds a run: continue it with trainer.resume()"):
        make_trainer(run_dir=run).fit()
    assert (run / run_log.METRICS_FILE).read_text() == before  # untouched
    make_trainer(run_dir=run, overwrite=True).fit()
    steps = [r["step"] for r in run_log.read_metrics(run) if r["kind"] == "train"]
    assert steps == sorted(set(steps))  # one run's records, not two runs' mixed


def test_fit_again_on_the_same_trainer_continues_its_own_run(tmp_path):
    trainer = make_trainer(run_dir=tmp_path / "run", overwrite=True)
    trainer.fit()
    steps = trainer.step
    trainer.cfg = trainer.cfg.replace(max_steps=steps + 2)
    trainer.fit()  # neither refused nor cleared: this trainer's own run goes on
    assert trainer.step == steps + 2
    assert ckpt.list_checkpoints(tmp_path / "run")[0] is not None
    logged = [r["step"] for r in run_log.read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert logged == list(range(1, steps + 3))
