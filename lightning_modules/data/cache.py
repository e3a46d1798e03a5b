"""Where generated datasets are cached: ``$NNCF_EXT_DATA`` or ``./data`` (git-ignored, never committed), and
how a generated copy is put there."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def data_root() -> Path:
    return Path(os.environ.get("NNCF_EXT_DATA") or "data").expanduser().resolve()


@contextmanager
def publishing(target: Path, complete: Callable[[Path], bool]) -> Iterator[Path]:
    """A fresh directory beside ``target`` to generate a data set into, renamed to ``target`` when the body
    succeeds and removed when it fails, so no reader ever sees half a data set.

    A complete copy (``complete(target)``) that another process published meanwhile is kept, since it may
    be in use, and the new one is discarded; a stale or incomplete one is replaced.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o755)  # mkdtemp makes it 0700, which would hide a shared cache from other users
    if complete(target):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if target.exists():  # stale: moved aside first, as a rename cannot replace a non-empty directory
        stale = target.with_name(f".{target.name}.stale{os.getpid()}")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process published between the check and the rename
        shutil.rmtree(tmp, ignore_errors=True)
        if not complete(target):
            raise
