"""The one atomic writer: file modes, temp-file naming, and one-line errors for unreadable teachers."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from semckd.atomic import atomic_copy, atomic_path, is_temp_of, write_text_atomic
from semckd.checkpoint import atomic_save
from semckd.errors import UserError
from semckd.runfolder import load_checkpoint


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_atomic_write_gets_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_save({"a": torch.zeros(1)}, tmp_path / "last.pt")
        atomic_copy(tmp_path / "last.pt", tmp_path / "best.pt")
        write_text_atomic(tmp_path / "run.json", "{}\n")
        (tmp_path / "plain.txt").write_text("x")  # what open() gives, for comparison
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["last.pt", "best.pt", "run.json", "plain.txt"], 0o666 & ~umask)


def test_failed_write_leaves_no_temp_file_and_temp_names_are_recognised(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "last.pt") as tmp:
        assert is_temp_of(tmp.name, "last.pt") and not is_temp_of(tmp.name, "best.pt")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    assert not is_temp_of("last.pt", "last.pt") and not is_temp_of(".last.pt", "last.pt")


def test_plain_pickle_teacher_is_named_as_such(tmp_path):
    p = tmp_path / "t.pkl"
    with open(p, "wb") as f:
        pickle.dump({"w": torch.zeros(2)}, f, protocol=4)
    with pytest.raises(UserError) as e:
        load_checkpoint(p, "teacher checkpoint")
    msg = str(e.value)
    assert "plain pickle file (protocol 4)" in msg and "re-save it with torch.save" in msg


def test_corrupt_file_gives_the_real_reason_not_a_cut_preamble(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"\x80\x02" + b"garbage " * 40)  # protocol-2 header (torch's legacy format), then junk
    with pytest.raises(UserError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert "corrupt or not a PyTorch file (" in msg and msg.endswith(")")
    inner = msg[msg.index("file (") + 6:-1]
    # the unpickler's own reason, not the first words of torch's generic weights_only preamble
    assert inner == "Unsupported operand 103"


def test_a_write_removes_temps_of_dead_writers_only(tmp_path):
    """A kill -9 mid-write leaves ``.NAME.HOST-PID.XXXX.tmp``; the next write of NAME removes it when that
    process is gone, and keeps a live writer's (another sweep worker) and another machine's."""
    import subprocess
    import sys

    from semckd.atomic import temp_owner

    host = temp_owner().rpartition("-")[0]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {"dead": f".t.txt.{host}-{int(dead.stdout)}.abc.tmp.txt",
                 "live": f".t.txt.{host}-{live.pid}.abc.tmp.txt",
                 "other_host": f".t.txt.elsewhere-{int(dead.stdout)}.abc.tmp.txt",
                 "other_file": f".u.txt.{host}-{int(dead.stdout)}.abc.tmp.txt"}
        for n in names.values():
            (tmp_path / n).write_text("half")
        write_text_atomic(tmp_path / "t.txt", "whole")
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted([names["live"], names["other_host"], names["other_file"], "t.txt"])
        assert (tmp_path / "t.txt").read_text() == "whole"
    finally:
        live.kill()
        live.wait()
