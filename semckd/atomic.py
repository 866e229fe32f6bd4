"""The one atomic writer for every file semckd writes (torch-free, so light commands stay light).

A write goes to a temp file beside the target (``.NAME.XXXX.tmp``) and is renamed over it with
``os.replace``: a reader (or a resumed run) sees the old file or the new one, never half of one. A kill
can leave the temp file behind; run folders remove such leftovers (:func:`is_temp_of`) when a run starts,
and the next write of the same file removes those of dead writers on this host (their names carry
``host-pid``), so rerunning a killed export, plot or sweep leaves nothing behind.

Checkpoints, config.yaml, metrics.jsonl, run.json, reports, sweep tables, exports and figures all come
through here, so they share one behaviour: the same mode, fsync before the rename, and the same
``write:NAME`` / ``written:NAME`` fault points the kill -9 tests use. :func:`atomic_write` streams bytes
(``torch.save``, a copy), :func:`write_text_atomic` writes text, and :func:`atomic_path` hands a temp path
to writers that only take a file name (matplotlib, TorchScript, ONNX).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["FAULT_ENV", "atomic_copy", "atomic_path", "atomic_write", "fault_point", "is_temp_of",
           "temp_owner", "write_text_atomic"]

FAULT_ENV = "SEMCKD_FAULT"
_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Testing hook: ``SEMCKD_FAULT=NAME@N`` SIGKILLs this process the N-th time it passes ``NAME``.

    The kill-9 tests use it to land a kill at an exact moment (``step`` inside an epoch, ``write:last.pt``
    with the temp file half written, ``written:last.pt`` with it complete but not yet renamed...). Unset,
    it costs one dict lookup; it never runs in normal use. ``SEMCKD_FAULT=int:NAME@N`` sends SIGINT (Ctrl-C)
    there instead.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    n = _fault_counts[name] = _fault_counts.get(name, 0) + 1
    sig_name, _, spec = spec.partition(":") if spec.startswith("int:") else ("", "", spec)
    target, _, count = spec.rpartition("@")
    if target == name and count.isdigit() and int(count) == n:
        import signal

        if sig_name == "int":  # ``int:NAME@N``: Ctrl-C (SIGINT) there instead of a kill -9
            signal.raise_signal(signal.SIGINT)
            return
        os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_temp_of(filename: str, name: str) -> bool:
    """Whether ``filename`` is a temp file :func:`atomic_path` makes for ``name`` (left by a kill)."""
    return filename.startswith(f".{name}.") and ".tmp" in filename[len(name) + 2:]


def temp_owner() -> str:
    """``host-pid`` of this process, as temp names carry it (dots would end the field)."""
    return f"{os.uname().nodename.replace('.', '_')}-{os.getpid()}"


def _remove_dead_temps(p: Path) -> None:
    """Temp files of ``p`` whose writer was a process of this host that no longer exists (a kill -9 or a
    power cut mid-write): the next write of the same file removes them, so rerunning a killed command
    (export, plot, a sweep's tables) leaves nothing behind. Another live writer's temp (a second sweep
    worker, another machine sharing the folder) is never touched."""
    host = os.uname().nodename.replace(".", "_")
    try:
        entries = list(os.scandir(p.parent))
    except OSError:
        return
    for e in entries:
        if not is_temp_of(e.name, p.name):
            continue
        owner = e.name[len(p.name) + 2:].split(".", 1)[0]
        h, _, pid = owner.rpartition("-")
        if h != host or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(e.path)
        except OSError:
            pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` atomically (``os.replace``).

    Readers never see half a file and an interrupted write leaves the old file intact. The file gets the
    usual ``0666 & ~umask`` mode (``mkstemp`` makes 0600), so every file a run writes has the same mode.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(p)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.{temp_owner()}.", suffix=f".tmp{p.suffix}", dir=p.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        fault_point(f"written:{p.name}")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None], *, fsync: bool = True) -> None:
    """Call ``write(f)`` on a binary file that atomically replaces ``path`` once ``write`` returns.

    ``fsync`` (the default) flushes the data to disk before the rename, so a power cut cannot leave a
    renamed but empty file; a kill at any moment leaves the old file.
    """
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as f:
        write(f)
        fault_point(f"write:{Path(path).name}")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` atomically."""
    def write(f: IO[bytes]) -> None:
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, length=1 << 20)

    atomic_write(dst, write)
