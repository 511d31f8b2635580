"""How every command line tool (train, export, convert, sample, compare, predict) reports a failure:
one line ``error: <what, naming the file / key / value>; <what to do>`` on stderr, a non-zero exit
status, no traceback. ``TT_DEBUG=1`` re-raises instead, for the traceback.

Exit status: 2 for a config or usage problem, 1 for anything else, 130 for Ctrl-C,
143 when SIGTERM stopped a training run (its checkpoint was saved).
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable, Sequence

DEBUG_ENV = "TT_DEBUG"

# Exception types whose message was written for the user: print it as it is.
_USER_ERRORS = ("ConfigError", "CheckpointError", "RunDirError", "NonFiniteError", "NonFiniteLossError")


def describe(err: BaseException) -> str:
    """One line for ``err``: the message of the toolkit's own errors, the OS's reason and file otherwise."""
    if isinstance(err, OSError) and err.filename is not None:
        reason = err.strerror or type(err).__name__
        target = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 else "")
        hint = {errno.ENOSPC: "; free disk space and run again (resume_from=auto continues a run from its last checkpoint)",
                errno.EFBIG: "; the file size limit was reached: free space or raise the limit, then run again",
                errno.EACCES: "; check the permissions", errno.EROFS: "; choose a writable location",
                errno.ENOTDIR: "; a path component is a file, not a directory",
                errno.EISDIR: "; give a file, not a directory", errno.EEXIST: "; choose another name"}.get(err.errno, "")
        return f"{reason}: {target}{hint}"
    text = " ".join(str(err).split()) or type(err).__name__  # one line, whatever the message held
    if type(err).__name__ in _USER_ERRORS or isinstance(err, (ValueError, FileNotFoundError, FileExistsError,
                                                               NotADirectoryError, IsADirectoryError, PermissionError)):
        return text
    if isinstance(err, OSError):
        return f"{text}; free disk space and run again" if err.errno in (errno.ENOSPC, errno.EFBIG) else text
    if isinstance(err, MemoryError):
        return "out of memory; lower data.batch_size or the model size"
    return f"{type(err).__name__}: {text} (unexpected; rerun with {DEBUG_ENV}=1 for the traceback and report it)"


def exit_code(err: BaseException) -> int:
    return 2 if type(err).__name__ == "ConfigError" else 1


def guarded(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; any exception becomes the one-line report described above."""
    try:
        return main(argv)
    except SystemExit as err:
        if type(err).__name__ == "SIGTERMException":  # Lightning: SaveOnInterrupt has saved the checkpoint
            print("stopped by SIGTERM before max_steps; resume with resume_from=auto", file=sys.stderr)
            return 143
        raise
    except KeyboardInterrupt:
        if os.environ.get(DEBUG_ENV):
            raise
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BaseException as err:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"error: {describe(err)}", file=sys.stderr)
        return exit_code(err)
