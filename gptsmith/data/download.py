"""The few files gptsmith needs from outside: finding GPT-2's BPE files, and fetching them and
two toy corpora.

``resolve_gpt2_bpe`` finds GPT-2's BPE files offline first: a path the user gave, tiktoken's
cache, our cache, and only then the network. Everything fetched lands in one user cache
directory (``cache_dir()``), written atomically and checked against a sha256 where one is known.
The library never prints: callers pass ``report`` (a function taking one line of text) to hear
what is being tried.

Fetching GPT-2's ranks file tries three places, in this order, so that a machine whose only
outside access is PyPI still gets it:

1. tiktoken's own download cache (filled by anything that ever ran ``tiktoken.get_encoding``),
2. OpenAI's public URL (online machines),
3. the ``openai-whisper`` source distribution on PyPI, which ships the very same file as
   ``whisper/assets/gpt2.tiktoken``; pip downloads the sdist (no install) and we extract it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from gptsmith.errors import DataError
from gptsmith.storage import atomic_write_bytes

GPT2_TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# tiktoken's "gpt2" encoding is built from these two files (OpenAI's original release format).
GPT2_VOCAB_BPE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"
GPT2_ENCODER_JSON_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_RANKS_MEMBER = "whisper/assets/gpt2.tiktoken"

# Toy corpora that `gptsmith download NAME` can fetch (online only), with their known checksums.
CORPUS_URLS = {
    "the-verdict": (
        "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/"
        "the-verdict.txt",
        "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
    ),
    "tinyshakespeare": (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
}

Report = Callable[[str], None]


def cache_dir() -> Path:
    """User cache dir: $GPTSMITH_CACHE_DIR, else $XDG_CACHE_HOME/gptsmith, else ~/.cache/gptsmith."""
    if os.environ.get("GPTSMITH_CACHE_DIR"):
        return Path(os.environ["GPTSMITH_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "gptsmith"


def gpt2_bpe_cache_path() -> Path:
    """Where ``gptsmith download gpt2-bpe`` keeps GPT-2's ranks (tiktoken format)."""
    return cache_dir() / "gpt2-bpe" / "gpt2.tiktoken"


def is_offline() -> bool:
    """True when $GPTSMITH_OFFLINE asks gptsmith never to touch the network."""
    return os.environ.get("GPTSMITH_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def tiktoken_cache_file(url: str) -> Path:
    """The path tiktoken uses to cache ``url`` (same rules as ``tiktoken.load.read_file_cached``)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        directory = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        directory = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        directory = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return Path(directory) / hashlib.sha1(url.encode()).hexdigest()


def fetch_url(url: str, timeout: float = 20.0) -> bytes:
    """GET ``url`` with a short timeout (so an offline machine fails fast instead of hanging)."""
    if is_offline():
        raise OSError("GPTSMITH_OFFLINE is set")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed https URLs)
        return response.read()


# --- Finding GPT-2's BPE files, offline first ------------------------------------------------


def find_bpe_files(path: Path) -> tuple[str, tuple[Path, ...]]:
    """("tiktoken", (ranks,)) or ("data_gym", (vocab.bpe, encoder.json)) for a file or directory."""
    if path.is_dir():
        tiktoken_files = sorted(path.glob("*.tiktoken"))
        if tiktoken_files:
            return "tiktoken", (tiktoken_files[0],)
        if (path / "vocab.bpe").is_file() and (path / "encoder.json").is_file():
            return "data_gym", (path / "vocab.bpe", path / "encoder.json")
        raise DataError(
            f"no GPT-2 BPE files in {path}: expected a .tiktoken ranks file, or encoder.json and vocab.bpe "
            "(run `gptsmith download gpt2-bpe` to fetch them)"
        )
    if path.is_file():
        if path.name in {"vocab.bpe", "encoder.json"}:
            pair = (path.parent / "vocab.bpe", path.parent / "encoder.json")
            missing = [str(p) for p in pair if not p.is_file()]
            if missing:
                raise DataError(f"{path} needs its partner file {missing[0]} (OpenAI's format is a pair)")
            return "data_gym", pair
        return "tiktoken", (path,)
    raise DataError(
        f"GPT-2 BPE path not found: {path} (point GPTSMITH_GPT2_BPE at a gpt2.tiktoken file or a directory "
        "with encoder.json + vocab.bpe, or run `gptsmith download gpt2-bpe`)"
    )


def resolve_gpt2_bpe(
    path: str | Path | None = None, *, allow_download: bool = True
) -> tuple[str, tuple[Path, ...]]:
    """Find GPT-2's BPE files, offline first, and say which format they are in.

    Order: an explicit ``path`` or $GPTSMITH_GPT2_BPE (the user said so; errors if broken) ->
    tiktoken's own download cache -> gptsmith's user cache (``gptsmith download gpt2-bpe``) ->
    OpenAI's public URL when online (saved to the user cache). Otherwise a ``DataError`` that says
    exactly what to run.
    """
    explicit = path or os.environ.get("GPTSMITH_GPT2_BPE")
    if explicit:
        return find_bpe_files(Path(explicit).expanduser())
    # tiktoken's cache: either its r50k ranks file or the pair its "gpt2" encoding downloads.
    cached = tiktoken_cache_file(GPT2_TIKTOKEN_URL)
    if cached.is_file() and sha256_bytes(cached.read_bytes()) == GPT2_TIKTOKEN_SHA256:
        return "tiktoken", (cached,)
    vocab, encoder = tiktoken_cache_file(GPT2_VOCAB_BPE_URL), tiktoken_cache_file(GPT2_ENCODER_JSON_URL)
    if vocab.is_file() and encoder.is_file():
        return "data_gym", (vocab, encoder)
    ours = gpt2_bpe_cache_path()
    if ours.is_file():
        return "tiktoken", (ours,)
    if allow_download and not is_offline():
        try:
            # Only the URL here: fetching from PyPI is `gptsmith download gpt2-bpe`'s explicit job.
            return "tiktoken", (download_gpt2_bpe(use_pypi=False),)
        except DataError:
            pass
    raise DataError(
        "GPT-2 BPE files not found; run `gptsmith download gpt2-bpe` (fetches them from OpenAI or PyPI "
        f"into {ours.parent}), or set GPTSMITH_GPT2_BPE to a gpt2.tiktoken file or encoder.json/vocab.bpe dir"
    )



# --- Fetching them -----------------------------------------------------------------------------


def ranks_from_whisper_sdist(dest: Path | None = None) -> bytes:
    """Download the openai-whisper sdist with pip (no install, no deps) and return its gpt2.tiktoken."""
    if is_offline():
        raise OSError("GPTSMITH_OFFLINE is set")
    with tempfile.TemporaryDirectory(prefix="gptsmith-whisper-") as tmp:
        target = Path(dest or tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--quiet", "--dest", str(target), WHISPER_SDIST]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise OSError(f"pip download {WHISPER_SDIST} failed: {last}")
        archives = sorted(target.glob("openai*whisper*.tar.gz"))
        if not archives:
            raise OSError(f"pip download {WHISPER_SDIST} produced no .tar.gz in {target}")
        with tarfile.open(archives[0], "r:gz") as archive:
            for member in archive.getmembers():
                if member.isfile() and member.name.endswith(WHISPER_RANKS_MEMBER):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        return handle.read()
        raise OSError(f"{archives[0].name} has no {WHISPER_RANKS_MEMBER}")


def download_gpt2_bpe(*, force: bool = False, use_pypi: bool = True, report: Report | None = None) -> Path:
    """Make sure GPT-2's ranks file is in the user cache and return its path.

    Tries tiktoken's cache, OpenAI's URL, then (``use_pypi``) the openai-whisper sdist on PyPI; each
    candidate must match the known sha256. Raises ``DataError`` listing what failed when none works.
    """
    say = report or (lambda _line: None)
    target = gpt2_bpe_cache_path()
    if target.is_file() and not force:
        if sha256_bytes(target.read_bytes()) == GPT2_TIKTOKEN_SHA256:
            say(f"already cached: {target}")
            return target
        say(f"cached file {target} has the wrong sha256; fetching it again")

    def from_tiktoken_cache() -> bytes:
        cached = tiktoken_cache_file(GPT2_TIKTOKEN_URL)
        if not cached.is_file():
            raise OSError(f"not in tiktoken's cache ({cached})")
        return cached.read_bytes()

    sources: list[tuple[str, Callable[[], bytes]]] = [
        ("tiktoken cache", from_tiktoken_cache),
        (GPT2_TIKTOKEN_URL, lambda: fetch_url(GPT2_TIKTOKEN_URL)),
    ]
    if use_pypi:
        sources.append((f"PyPI sdist {WHISPER_SDIST}", ranks_from_whisper_sdist))
    failures = []
    for label, fetch in sources:
        say(f"trying {label} ...")
        try:
            data = fetch()
        except (OSError, subprocess.SubprocessError, tarfile.TarError) as exc:
            failures.append(f"{label}: {exc}")
            continue
        if sha256_bytes(data) != GPT2_TIKTOKEN_SHA256:
            failures.append(f"{label}: sha256 mismatch")
            continue
        atomic_write_bytes(target, data)
        say(f"saved {target} (from {label})")
        return target
    raise DataError(
        "could not fetch GPT-2's BPE ranks (" + "; ".join(failures) + "); on a machine without internet, "
        f"copy gpt2.tiktoken to {target}, or set GPTSMITH_GPT2_BPE to a gpt2.tiktoken file or a folder "
        "with encoder.json + vocab.bpe"
    )


def download_corpus(name: str, *, force: bool = False, report: Report | None = None) -> Path:
    """Fetch a named toy corpus ("the-verdict", "tinyshakespeare") into the cache; online only."""
    say = report or (lambda _line: None)
    if name not in CORPUS_URLS:
        raise DataError(f"unknown corpus {name!r} to download (known: {', '.join(sorted(CORPUS_URLS))})")
    url, expected = CORPUS_URLS[name]
    target = cache_dir() / "data" / f"{name}.txt"
    if target.is_file() and not force:
        say(f"already cached: {target}")
        return target
    if not is_offline():  # (offline, fetch_url refuses at once: no "fetching" line before the error)
        say(f"fetching {url} ...")
    try:
        data = fetch_url(url)
    except OSError as exc:
        raise DataError(
            f"cannot download {name} from {url} ({exc}); this needs internet: copy the file to {target} "
            "or pass its path instead"
        ) from None
    if sha256_bytes(data) != expected:
        raise DataError(f"downloaded {name} from {url} but its sha256 is not the expected {expected[:12]}...")
    atomic_write_bytes(target, data)
    say(f"saved {target}")
    return target
