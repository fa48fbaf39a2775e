"""The one error type the command line turns into a single clear line on stderr, and the one line for anything else
that goes wrong (never a traceback, unless PANTHER_DEBUG asks for it)."""

from __future__ import annotations

import math
import os
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

DEBUG_VARIABLE = "PANTHER_DEBUG"  # set to 1: a failure's traceback follows its error line
# What an allocation that failed says where it is not a MemoryError: torch's CPU allocator, CUDA, cuDNN, SimpleITK,
# and oneDNN (torch's CPU convolutions), which reports its scratchpad's failed allocation only as a primitive it
# could not create (seen under RLIMIT_DATA with torch 2.7.1; the networks it runs are checked when they load)
_ALLOCATION_WORDS = ("can't allocate memory", "out of memory", "std::bad_alloc", "failed to allocate",
                     "cudnn_status_alloc_failed", "cudnn_status_not_enough_workspace", "cannot allocate memory",
                     "could not create a primitive")


class PantherError(Exception):
    """A problem with the user's input, spec or weights: message says which file and what is wrong."""


class AlreadyReported(PantherError):
    """The run failed and each failure has had its line already: exit 1 and nothing more on stderr."""


class CaseFailure(PantherError):
    """Something other than the input went wrong in one case (out of memory, a library's or our own bug): one line
    that names the case, the original exception chained for PANTHER_DEBUG."""

    @classmethod
    def of(cls, case: object, error: Exception) -> PantherError:
        """`error` as one line naming `case`; a PantherError already names its file and stays as it is."""
        return error if isinstance(error, PantherError) else cls(f"{case}: {failure_line(error)}")


def finite_number(value: float, what: str, zero: bool = False) -> float:
    """`value` where it is a finite number above 0 (or 0 itself, where `zero`); else one line naming `what` (a flag,
    a spec's key): NaN and infinity are no number of seconds, millimetres or weight."""
    if not (math.isfinite(value) and (value > 0 or zero and value == 0)):
        raise PantherError(f"{what} must be a finite number{', 0 or more' if zero else ' above 0'}, got {value}")
    return value


@contextmanager
def naming_the_case(case: object) -> Iterator[None]:
    """Whatever goes wrong inside is one line naming `case` (a tool that needs every case stops there: evaluate,
    select)."""
    try:
        yield
    except PantherError:
        raise
    except Exception as e:
        raise CaseFailure.of(case, e) from e


def is_allocation_failure(error: BaseException) -> bool:
    """A MemoryError, or an allocation failure that a library reports as a plain RuntimeError."""
    if isinstance(error, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(error).__mro__):
        return True  # torch's OutOfMemoryError (not imported here: core imports nothing heavy)
    return isinstance(error, RuntimeError) and any(w in str(error).lower() for w in _ALLOCATION_WORDS)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # ITK's (SimpleITK's): where it was thrown, then what happened
        lines = lines[1:]
    # torch prefixes its C++ checks with where they failed: the words after it say what
    return re.sub(r"^\[enforce fail at [^\]]*\]\s*(\S+ == \S+\.\s*)?", "", lines[0])[:300] if lines else ""


def failure_line(error: BaseException) -> str:
    """What went wrong, in one line: a PantherError's own message, an allocation that failed as out of memory, else
    the exception's type and first line (a bug or a library's complaint: PANTHER_DEBUG=1 shows where)."""
    if isinstance(error, PantherError):
        return str(error).replace("\n", " ")
    if is_allocation_failure(error):
        said = _first_line(error)
        return "out of memory" + (f" ({said})" if said else "") + ": the case needs more memory than this " \
            "process may use (its limit is in the log's 'host memory' line)"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    said = _first_line(error)
    return f"unexpected {type(error).__name__}" + (f": {said}" if said else "") + \
        f" (set {DEBUG_VARIABLE}=1 for the traceback)"


def print_failure(error: BaseException, prefix: str = "") -> None:
    """The failure's one `error:` line on stderr (its traceback after it with PANTHER_DEBUG=1)."""
    print(f"error: {prefix}{failure_line(error)}", file=sys.stderr, flush=True)
    if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
        traceback.print_exception(error, file=sys.stderr)
