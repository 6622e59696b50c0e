"""Writing files so that a crash or a full disk never leaves a half-written file in place.

Every file the tooling produces goes to a temporary name in the same directory and is renamed over
the destination only once it is complete (rename is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from pgolf.errors import PgolfError, os_error_message


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _file_mode()  # mkstemp's files are 0600; finished files get the usual mode


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file next to ``path`` for binary writing; rename it to ``path`` on success.

    On any error the temporary file is removed and ``path`` keeps its old content; an OSError
    (full disk, permissions) becomes a one-line ``PgolfError`` naming ``path``.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
        os.chmod(tmp, _MODE)
    except OSError as e:
        raise PgolfError(os_error_message(e, path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise PgolfError(os_error_message(e, path)) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_writer(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    write_bytes(path, text.encode("utf-8"))


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Atomically copy ``src`` to ``dst`` (content and permission bits)."""
    try:
        src_f = open(src, "rb")
    except OSError as e:
        raise PgolfError(os_error_message(e, os.fspath(src))) from None
    with src_f, atomic_writer(dst) as out:
        shutil.copyfileobj(src_f, out)
    with contextlib.suppress(OSError):
        shutil.copymode(src, dst)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
