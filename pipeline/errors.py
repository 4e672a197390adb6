"""The user-facing error types of every stage, so the CLI can turn each into one line and an exit code."""

from __future__ import annotations


class PipelineError(Exception):
    """A stage failed for a reason the user can act on (message is one line)."""


class GateFailed(PipelineError):
    """The quality gate refused to publish."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from pipeline.package import PackageError
    from pipeline.storage import StorageError

    return (PipelineError, StorageError, PackageError)


USER_ERRORS = _user_errors()


def exit_code_for(exc: BaseException) -> int:
    return 3 if isinstance(exc, GateFailed) else 1
