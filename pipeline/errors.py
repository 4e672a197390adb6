"""The user-facing error types of every stage, so the CLI can turn each into one line and an exit code.

This module imports nothing of the pipeline (and neither torch nor Ray): the CLI catches these
without loading any stage.
"""

from __future__ import annotations

import re


class PipelineError(Exception):
    """A stage failed for a reason the user can act on (message is one line)."""


class GateFailed(PipelineError):
    """The quality gate refused to publish."""


class StorageError(Exception):
    """A storage problem, already phrased for the user in one line."""


class NotFound(StorageError):
    """The object does not exist (its bucket does)."""


class PackageError(Exception):
    """A model package is missing, unpublished, truncated or does not fit its architecture."""


USER_ERRORS: tuple[type[BaseException], ...] = (PipelineError, StorageError, PackageError)


# A user-facing error as Ray's remote traceback text prints it (the exception object itself does not
# survive Ray Data's UserCodeException wrapping).
_USER_ERROR_LINE = re.compile(
    r"^(?:pipeline\.[a-z_.]+\.)?(?:PipelineError|StorageError|PackageError|GateFailed|NotFound): (.+)$", re.M)
_ANY_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", re.M)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it wraps: causes, contexts and Ray's ``cause``/``_base_exc``."""
    seen, stack, out = set(), [exc], []
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None), getattr(e, "_base_exc", None)]
    return out


def user_error_line(exc: BaseException) -> str | None:
    """The one-line message of a user-facing error raised in a Ray worker, however Ray wrapped it."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, USER_ERRORS) and not type(e).__module__.startswith("ray"):
            return str(e)
    for e in chain:
        found = _USER_ERROR_LINE.findall(str(e))
        if found:
            return found[-1].strip()
    return None


def last_error_line(exc: BaseException) -> str:
    """``Type: message`` of the innermost non-Ray exception in a (possibly Ray-wrapped) error."""
    chain = _chain(exc)
    raised = _ANY_ERROR_LINE.findall("\n".join(str(e) for e in chain))
    real = [f"{name.rsplit('.', 1)[-1]}: {msg.strip()}" for name, msg in raised if not name.startswith("ray.")]
    if real:
        return real[-1][:300]
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {(lines[-1] if lines else '')[:300]}"


def exit_code_for(exc: BaseException) -> int:
    return 3 if isinstance(exc, GateFailed) else 1
