"""Atomic file writes: a temporary file beside the target, renamed onto it when complete.

Every file pyzsl writes (embeddings, dictionaries, alignments, ZSL models, trainer checkpoints,
benchmark results) goes through :func:`atomic_write`, so a crash or Ctrl-C never leaves a half-written file under the
target's name, and no old file is replaced by a partial one. The file gets the permissions a plain
``open`` would give (``0o666`` less the umask), not ``tempfile.mkstemp``'s ``0o600``.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new file under a random hidden name in ``path``'s folder, opened for writing.

    Created with mode 0o666 so that the kernel applies the umask, as for a plain ``open``
    (reading the umask needs ``os.umask``, which sets it process-wide: not thread-safe)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot write {path}: no free temporary name in {path.parent}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, parents: bool = False,
                 encoding: str | None = None, newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file in ``path``'s folder; rename it onto ``path`` when the ``with``
    block ends normally, remove it when the block raises.

    ``parents``: create missing folders (checkpoints); otherwise a missing folder is a
    ``FileNotFoundError`` naming it (outputs a user asked for).
    """
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write` (missing folders are created)."""
    import torch

    with atomic_write(path, parents=True) as f:
        torch.save(obj, f)
