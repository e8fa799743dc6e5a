"""storage.atomic_path on paths that are not plain files: pipes and devices are written to, links kept."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from gptsmith.storage import atomic_write_text


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_a_pipe_is_written_to_not_replaced_by_a_file(tmp_path):
    """As /dev/null or /dev/stdout would be: the rename used to swap the device for a plain file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    atomic_write_text(fifo, "{}\n")
    reader.join(timeout=10)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)  # still the pipe
    assert received == [b"{}\n"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary file left beside it


def test_a_link_keeps_pointing_at_its_file_which_gets_the_text(tmp_path):
    target = tmp_path / "real" / "report.json"
    target.parent.mkdir()
    target.write_text("old", encoding="utf-8")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    assert atomic_write_text(link, "new") == link
    assert link.is_symlink() and Path(os.readlink(link)) == target  # was replaced by a plain file
    assert target.read_text(encoding="utf-8") == "new"
