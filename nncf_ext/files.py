"""Writing files so that no reader ever sees half of one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _exclusive(path: Path, make: Callable[[Path], object]) -> Path:
    """A fresh name beside ``path`` (``.<name>.<random>.tmp``) created by ``make(name)``, which must fail with
    FileExistsError when the name is taken."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # 14 more characters, as mkstemp
        try:
            make(tmp)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def temporary_directory(path: Path) -> Path:
    """An empty directory beside ``path`` with an ordinary directory's mode (the umask applies, as for
    ``mkdir``; ``tempfile.mkdtemp`` makes 0700, which would hide a shared cache from others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return _exclusive(path, lambda name: name.mkdir(0o777))


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the body to write; renamed onto ``path`` when the body succeeds,
    removed otherwise, so a failed write leaves the previous file as it was.

    The file has an ordinary file's mode: created 0666 less the umask, which the kernel applies
    (``mkstemp`` makes 0600, and reading the umask means setting it, racing other threads). Raises
    ``OSError`` as the file system does (a missing directory, no space, no permission).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _exclusive(path, lambda name: os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
