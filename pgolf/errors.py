"""One exception type for every expected failure of the tooling.

Commands raise ``PgolfError("PATH: what is wrong")``; the CLI prints it as one line on stderr and
exits non-zero. Anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


class PgolfError(Exception):
    """An expected failure: bad input, a missing file, a crashed run. The message is one line."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def os_error_message(e: OSError, path: str | None = None) -> str:
    """One line for an OSError, naming the file; a full disk is said plainly."""
    where = path or e.filename or "?"
    if e.errno == errno.ENOSPC:
        return f"{where}: no space left on device"
    if e.errno == errno.EDQUOT:
        return f"{where}: disk quota exceeded"
    return f"{where}: {e.strerror or e}"
