"""Opt-in dataset download: checksum-verified, atomically written, safely extracted.

Nothing here runs unless the user asked for ``--download``. The archive is streamed to a temp file next
to its destination, its md5 compared with the value the dataset authors publish, and only then renamed
into place; extraction refuses absolute paths, ``..`` components, links and device files, and moves the
extracted tree into place only once it is complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import IO

from ..atomic import atomic_write
from ..errors import UserError

__all__ = ["download_and_extract", "download_file", "file_md5", "file_sha256", "safe_extract"]

_CHUNK = 1 << 20


def _file_digest(path: str | os.PathLike, h: hashlib._Hash) -> str:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_md5(path: str | os.PathLike) -> str:
    """The checksum the CIFAR archives publish (integrity, not security)."""
    return _file_digest(path, hashlib.md5(usedforsecurity=False))


def file_sha256(path: str | os.PathLike) -> str:
    """What the shipped weight files are recorded with."""
    return _file_digest(path, hashlib.sha256())


def _urlopen(url: str):  # a seam tests may monkeypatch
    return urllib.request.urlopen(url, timeout=60)


def download_file(url: str, dest: str | os.PathLike, md5: str, *, quiet: bool = False) -> Path:
    """Fetch ``url`` to ``dest`` (atomically) and verify its md5; a mismatch leaves nothing behind."""
    dest = Path(dest)

    def write(out: IO[bytes]) -> None:  # inside the one atomic writer: a failure leaves no file behind
        h = hashlib.md5(usedforsecurity=False)
        got_bytes = 0
        try:
            with _urlopen(url) as resp:
                total = int(resp.headers.get("Content-Length") or 0) if hasattr(resp, "headers") else 0
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
                    got_bytes += len(chunk)
                    if not quiet and total and sys.stderr.isatty():
                        print(f"\rdownloading {dest.name}: {100 * got_bytes // total}%", end="",
                              file=sys.stderr, flush=True)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise UserError(f"could not download {url} ({e}); check the network, or place "
                            f"{dest.name} in {dest.parent} by hand") from None
        if not quiet and sys.stderr.isatty():
            print(file=sys.stderr)
        digest = h.hexdigest()
        if digest != md5:
            raise UserError(f"download of {url} failed its checksum (md5 {digest}, expected {md5}, "
                            f"{got_bytes} bytes); retry --download, or fetch it by hand into {dest.parent}")

    atomic_write(dest, write)
    return dest


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    path = PurePosixPath(name)
    if (not name or path.is_absolute() or name.startswith(("/", "\\")) or ".." in path.parts
            or (len(name) > 1 and name[1] == ":")):
        raise UserError(f"{archive}: refusing to extract unsafe member path {name!r}; "
                        "the archive is not the official one, delete it and retry --download")
    if not (member.isfile() or member.isdir()):
        raise UserError(f"{archive}: refusing to extract {name!r} (links and special files are not "
                        "allowed); delete the archive and retry --download")


def safe_extract(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> list[Path]:
    """Extract a tar archive into ``dest_dir``; returns the top-level paths it created or replaced."""
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{archive}: not a readable tar archive ({e}); delete it and retry "
                        "--download") from None
    staging = Path(tempfile.mkdtemp(dir=dest_dir, prefix=".extract-"))
    try:
        with tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, archive)
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, members=members, filter="data")
                else:  # pragma: no cover - Python without PEP 706; members were vetted above
                    tar.extractall(staging, members=members)  # noqa: S202
            except (tarfile.TarError, OSError, EOFError) as e:
                raise UserError(f"{archive}: extraction failed ({e}); delete it and retry "
                                "--download") from None
        created = []
        for top in sorted(os.listdir(staging)):
            target = dest_dir / top
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(staging / top, target)
            created.append(target)
        return created
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_and_extract(url: str, root: str | os.PathLike, filename: str, md5: str, *,
                         quiet: bool = False) -> Path:
    """Ensure ``root/filename`` exists with the right md5 (downloading if needed), then extract it."""
    root = Path(root)
    archive = root / filename
    if not (archive.is_file() and file_md5(archive) == md5):
        download_file(url, archive, md5, quiet=quiet)
    safe_extract(archive, root)
    return archive
