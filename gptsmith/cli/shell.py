"""Command lines that the CLI prints for the user to copy and run (the next step after a run, how
to resume one).

Each word is quoted for a POSIX shell (``shlex.quote``) where it needs it, so a hint with a path
such as ``runs/my run`` (a space), ``it's`` or ``$HOME`` still works when pasted:
``gptsmith generate --checkpoint 'runs/my run'``. Words that need nothing are printed as they are.
"""

from __future__ import annotations

import shlex
from os import PathLike


def command_line(*words: str | PathLike[str]) -> str:
    """``words`` (the command, its flags, paths, a prompt) as one line a shell reads back as them."""
    return " ".join(shlex.quote(str(word)) for word in words)
