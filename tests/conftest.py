"""Shared test fixtures.

Tests that read the public data sets in ``../shared/data`` (beside the checkout) use the
``shared_data`` fixture, which skips with a clear reason on a clone that does not have it.
``GPTSMITH_SHARED_DATA`` points somewhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GPTSMITH_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _small_thread_count():
    # Tests run on 2-core machines; keep torch from oversubscribing when pytest forks helpers.
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_torch_thread():
    """Run the test on one torch thread: tiny models go many times faster on one than on two threads
    contending for a shared 2-core machine. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _plenty_of_memory(monkeypatch):
    """Memory checks see a machine with 1 TiB free, so no outcome depends on what other processes
    happen to use; the tests of those checks set their own figure."""
    from gptsmith.model import memory

    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 2**40)


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when it is absent (a user's clone has none)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set GPTSMITH_SHARED_DATA to use it)")
    return SHARED_DATA


@pytest.fixture
def gpt2_bpe_dir(shared_data: Path) -> Path:
    """The verified GPT-2 BPE files (encoder.json, vocab.bpe, gpt2.tiktoken)."""
    path = shared_data / "gpt2-bpe"
    if not path.is_dir():
        pytest.skip(f"GPT-2 BPE files not found at {path}")
    return path


@pytest.fixture
def gpt2_tokenizer(monkeypatch: pytest.MonkeyPatch):
    """GPT-2 BPE tokenizer built offline from ../shared/data/gpt2-bpe (or the user cache).

    Also sets GPTSMITH_GPT2_BPE for the test, so code under test that calls
    ``get_tokenizer("gpt2")`` finds the same files. Skips when neither source is available.
    """
    from gptsmith.data.download import resolve_gpt2_bpe
    from gptsmith.data.tokenizer import GPT2Tokenizer, get_tokenizer
    from gptsmith.errors import DataError

    bpe_dir = SHARED_DATA / "gpt2-bpe"
    if bpe_dir.is_dir():
        monkeypatch.setenv("GPTSMITH_GPT2_BPE", str(bpe_dir))
        return GPT2Tokenizer.from_files(bpe_dir)
    try:
        _, files = resolve_gpt2_bpe(allow_download=False)
    except DataError as exc:
        pytest.skip(f"no GPT-2 BPE files: {exc}")
    # Name the files found (e.g. in the user cache), so tests that point GPTSMITH_CACHE_DIR at a
    # scratch folder still find them, as they find ../shared/data's.
    monkeypatch.setenv("GPTSMITH_GPT2_BPE", str(files[0] if len(files) == 1 else files[0].parent))
    monkeypatch.setenv("GPTSMITH_OFFLINE", "1")  # tests never touch the network
    return get_tokenizer("gpt2")
