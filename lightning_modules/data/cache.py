"""Where generated datasets are cached: ``$NNCF_EXT_DATA`` or ``./data`` (git-ignored, never committed), and
how a generated copy is put there."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nncf_ext.files import temporary_directory


def data_root() -> Path:
    return Path(os.environ.get("NNCF_EXT_DATA") or "data").expanduser().resolve()


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Held by one process at a time: the check and the swap of ``target`` (readers are not blocked)."""
    with open(target.with_name(f".{target.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def publishing(target: Path, complete: Callable[[Path], bool]) -> Iterator[Path]:
    """A fresh directory beside ``target`` to generate a data set into, renamed to ``target`` when the body
    succeeds and removed otherwise, so no reader ever sees half a data set.

    The check and the swap run under a lock file beside ``target``: a complete copy (``complete(target)``)
    that another process published meanwhile is kept, since it may be in use, and the new one is
    discarded; a stale or incomplete one (or a file in its place) is replaced.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_directory(target)  # the umask's mode: a shared cache stays readable by others
    try:
        yield tmp
        with _locked(target):
            if complete(target):
                return
            if target.exists() or target.is_symlink():  # moved aside first: a rename cannot replace it
                stale = target.with_name(f".{target.name}.stale{os.getpid()}")
                _remove(stale)
                os.replace(target, stale)
                _remove(stale)
            os.replace(tmp, target)
    finally:
        _remove(tmp)  # gone already when it was renamed into place
