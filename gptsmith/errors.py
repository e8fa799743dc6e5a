"""User-facing errors.

Every problem a user can fix (a wrong path, a bad flag value, a broken checkpoint) raises one of
these with a one-line message that names the problem and the fix. The CLI prints the message and
exits with status 2; it never shows a traceback for them. They subclass ``ValueError`` so Python
callers can catch them the usual way too.
"""


class GptsmithError(ValueError):
    """A problem with the user's input, with a message that says how to fix it."""


class ConfigError(GptsmithError):
    """An invalid configuration value, preset name or config file."""


class DataError(GptsmithError):
    """A corpus, token shard or dataset that cannot be used as asked."""


class CheckpointError(GptsmithError):
    """A checkpoint or weights file that is missing, incomplete or does not match its config."""


class StorageError(GptsmithError):
    """A file could not be written: the disk is full, or the directory is not writable."""


class NonFiniteError(GptsmithError):
    """A model gave NaN or infinite outputs: its weights are broken (a run that diverged, say)."""
