"""Opening the files a user names (a model, a WAV, a password file) without surprises."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for binary reading, if it is a regular file.

    A directory raises :class:`IsADirectoryError` and any other non-regular file
    (a FIFO, ``/dev/zero``) an :class:`OSError` saying so, where a plain ``open``
    would hang on a FIFO with no writer or read a device forever.
    """
    # O_NONBLOCK: a FIFO opens at once, to be refused, instead of waiting for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "Not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
