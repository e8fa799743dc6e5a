"""The Python examples of README.md and docs/*.md run, as a reader would run them.

Each page's ```python blocks run in order, in one namespace, in a scratch directory laid out like
a user's: ``runs/main`` and ``models/gpt2`` are small model directories (a tiny random GPT with
the GPT-2 tokenizer, standing in for what ``make run`` trains), and ``../shared/data`` is the
public data beside the checkout. A block that cannot run here says so just before it, in an HTML
comment ``<!-- not run: REASON -->``; every other block must run without error. The shell blocks'
``gptsmith VERB`` commands are checked against the CLI (every verb exists and its ``--help``
works) in tests/test_readme.py for the README and here for the docs pages.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from gptsmith.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\s*$")
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
STAGES = ("data", "model", "generate", "train", "finetune", "explain", "serve")


def python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, reason it is not run or None) for each ```python block of ``page``."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in BLOCK.finditer(text):
        if match.group(1) != "python":
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.search(before)
        blocks.append((text[: match.start()].count("\n") + 1, match.group(2), reason and reason.group(1)))
    return blocks


def test_every_stage_has_a_docs_page_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for stage in STAGES:
        page = ROOT / "docs" / f"{stage}.md"
        assert page.is_file(), f"docs/{stage}.md is missing"
        assert f"](docs/{stage}.md)" in readme, f"README does not link docs/{stage}.md"
        assert f"gptsmith/{stage}/" in page.read_text(encoding="utf-8").splitlines()[0]
    for page in PAGES:  # every relative link points at a file that exists
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_anchors_and_named_source_files_resolve():
    """A reader follows `page.md#section` links and opens the files a page names (`tests/...py`)."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([^)#:]*)#([^)]+)\)", text):
            linked = page.parent / target if target else page
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), flags=re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{page.name}: broken anchor {target}#{anchor}"
        for path in re.findall(r"`((?:tests|gptsmith|benchmarks)/[\w./-]+)`", text):
            assert (ROOT / path).exists(), f"{page.name} names {path}, which does not exist"


def test_every_page_has_python_examples_and_says_why_one_is_not_run():
    for page in PAGES:
        blocks = python_blocks(page)
        if page.name in ("README.md", "serve.md"):
            assert blocks, f"{page.name} has no Python example"
        for line, _, reason in blocks:
            assert reason is None or len(reason) > 10, f"{page.name}:{line}: give a reason it is not run"


@pytest.mark.parametrize("page", [p for p in PAGES[1:]], ids=lambda p: p.name)
def test_docs_shell_commands_name_real_verbs(page, capsys):
    known = set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    verbs = set()
    for lang, body in BLOCK.findall(page.read_text(encoding="utf-8")):
        if lang in ("", "bash", "sh"):
            verbs.update(re.findall(r"(?:^|\s|-m )gptsmith ([a-z][a-z-]*)", body))
    assert verbs <= known, f"{page.name} mentions unknown verbs: {sorted(verbs - known)}"
    for verb in sorted(verbs):
        with pytest.raises(SystemExit) as exit_info:
            main([verb, "--help"])
        assert exit_info.value.code == 0
    capsys.readouterr()


def test_explain_page_names_every_symbol_a_token_piece_shows():
    """docs/explain.md says how each whitespace character is drawn in a token piece."""
    from gptsmith.explain.tokens import VISIBLE

    page = (ROOT / "docs" / "explain.md").read_text(encoding="utf-8")
    assert all(f"`{symbol}`" in page for symbol in VISIBLE.values()), sorted(VISIBLE.values())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, request) -> Path:
    """A user's working directory: runs/main and models/gpt2 hold a tiny model; ../shared/data."""
    import torch

    from gptsmith import GPTConfig, GPTModel, save_model
    from gptsmith.data.tokenizer import GPT2Tokenizer

    shared = Path(os.environ.get("GPTSMITH_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not (shared / "gpt2-bpe").is_dir():
        pytest.skip(f"the examples need the GPT-2 BPE files from {shared} (absent)")
    base = tmp_path_factory.mktemp("reader")
    (base / "shared").mkdir()
    (base / "shared" / "data").symlink_to(shared.resolve(), target_is_directory=True)
    work = base / "work"
    work.mkdir()
    tokenizer = GPT2Tokenizer.from_files(shared / "gpt2-bpe")
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.from_preset("tiny")).eval()
    for where in ("runs/main", "models/gpt2"):
        save_model(model, work / where, tokenizer=tokenizer)
    return work


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_examples_run(page, scratch, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")  # no window, whatever the machine's default
    monkeypatch.chdir(scratch)
    monkeypatch.setenv("GPTSMITH_GPT2_BPE", str(scratch.parent / "shared" / "data" / "gpt2-bpe"))
    monkeypatch.setenv("GPTSMITH_OFFLINE", "1")
    namespace: dict = {"__name__": f"example:{page.name}"}
    ran = 0
    for line, code, reason in python_blocks(page):
        if reason is not None:
            continue
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as exc:  # name the page and line a reader would copy from
            pytest.fail(f"{page.name}:{line}: the example raised {type(exc).__name__}: {exc}")
        ran += 1
    assert ran or page.name == "serve.md", f"{page.name}: no example ran"
