"""Command lines that the CLI prints for the user to copy and run (the next step after a run, how
to resume one).

Each word is quoted for a POSIX shell (``shlex.quote``) where it needs it, so a hint with a path
such as ``runs/my run`` (a space), ``it's`` or ``$HOME`` still works when pasted:
``gptsmith generate --checkpoint 'runs/my run'``. Words that need nothing are printed as they are.
A path (a ``PathLike`` word) that starts with ``-`` is written ``./-run``, so that the command does
not take it for a flag.
"""

from __future__ import annotations

import shlex
from os import PathLike


def command_line(*words: str | PathLike[str]) -> str:
    """``words`` (the command, its flags, paths, a prompt) as one line a shell reads back as them;
    paths are given as ``Path`` objects (they are written as ``shell_word`` writes them)."""
    from gptsmith.train.checkpointing import shell_word  # late: `--help` imports no torch

    return " ".join(shell_word(word) if isinstance(word, PathLike) else shlex.quote(str(word))
                    for word in words)
