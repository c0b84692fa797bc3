"""One exception tree. Every error a user can fix derives from `EntiGraphError`, whose message says what is
wrong and how to fix it; the CLI prints such an error as one line. Anything else is a bug and keeps its
traceback.

    EntiGraphError
      ConfigError      a config key, value or combination cannot work
      InputError       an input file or folder cannot be read (documents, questions, replay text)
      QuestionsError   the evaluation questions file is malformed (an InputError)
      PromptError      a prompt set or template is malformed or lacks what a stage needs (a ConfigError)
      EngineError      the configured engine cannot run here (a missing package, API key or model)
      StorageError     output_dir or another URL cannot be read or written
      LayoutVersionError  output_dir was written by another layout version (a StorageError)
      LeaseHeld        another live run holds output_dir (a StorageError)
      StageFailed      a stage's workers failed, or it exceeded max_error_fraction

The subclasses of `ValueError` and `OSError` keep code that caught those before working.
"""

from __future__ import annotations

import re


class EntiGraphError(Exception):
    """An error the user can fix; the message names the key or file and the fix."""


class ConfigError(EntiGraphError, ValueError):
    """A config key, value or combination cannot work."""


class InputError(EntiGraphError, ValueError):
    """The configured input cannot be read; the message says why and how to fix it."""


class QuestionsError(InputError):
    """The evaluation questions file is malformed."""


class PromptError(ConfigError):
    """A prompt set or template is malformed, or lacks a template a stage needs."""


class EngineError(EntiGraphError, RuntimeError):
    """The configured engine cannot run here (a package, key or model is missing)."""


class StorageError(EntiGraphError, OSError):
    """A storage location cannot be read or written."""


class LayoutVersionError(StorageError):
    """output_dir was written in a storage layout this version does not read."""


class LeaseHeld(StorageError):
    """Another live run holds output_dir's lease, or this run lost it to a newer one."""


class StageFailed(EntiGraphError, RuntimeError):
    """A stage exceeded max_error_fraction, or its workers failed; the message says which and why."""


_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit|Timeout|Failed)):\s*(.+)$")
_WRAPPERS = ("UserCodeException", "RayTaskError", "RayActorError")
_STORAGE_WORDS = ("endpoint", "connect", "s3", "bucket", "permission", "credential", "no space")


def root_cause(exc: BaseException) -> str:
    """The original error behind Ray's wrappers: Ray Data re-raises a UDF failure as UserCodeException whose
    cause is a RayTaskError carrying the worker's traceback as text; its last `XError: message` line is it."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(cur)
        nxt = cur.__cause__ or getattr(cur, "cause", None)
        cur = nxt if isinstance(nxt, BaseException) else None
    for item in chain:
        for line in reversed(str(item).splitlines()):
            m = _ERROR_LINE.match(line)
            if m and not any(w in m.group(1) for w in _WRAPPERS):
                return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
    last = chain[-1]
    return f"{type(last).__name__}: {str(last).strip().splitlines()[-1] if str(last).strip() else ''}"


def is_worker_failure(exc: BaseException) -> bool:
    """Whether `exc` came from Ray workers (a task or actor failed, or Ray Data wrapped a UDF's error), as
    opposed to a bug on the driver, which keeps its own type and traceback."""
    names = {type(e).__name__ for e in _chain(exc)}
    return bool(names & {"UserCodeException", "RayTaskError", "RayActorError", "ActorDiedError",
                         "WorkerCrashedError", "ObjectLostError", "OutOfMemoryError", "RaySystemError"}) or any(
        n.startswith("RayTaskError") for n in names)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        nxt = cur.__cause__ or cur.__context__ or getattr(cur, "cause", None)
        cur = nxt if isinstance(nxt, BaseException) else None
    return out


def explain_stage_failure(stage: str | None, exc: BaseException, output_dir: str) -> str:
    """One paragraph for the user: which stage, the root cause, and that a re-run continues."""
    detail = root_cause(exc)
    storage_hint = ""
    if any(word in detail.lower() for word in _STORAGE_WORDS):
        storage_hint = (f" This looks like a storage problem with {output_dir!r}: check the endpoint "
                        "(AWS_ENDPOINT_URL), credentials and free space.")
    return (f"Stage {stage!r} failed: {detail[:500].rstrip('.')}.{storage_hint} Committed shards are "
            "kept; re-run the same command to continue from them.")
