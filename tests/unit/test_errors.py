"""User-facing errors (errors.py): the worker error behind Ray's wrappers, and the failure explanation."""

from ray_entigraph.errors import explain_stage_failure, is_worker_failure, root_cause


class UserCodeException(Exception):
    """Named like Ray Data's wrapper of a UDF's failure."""


class RayTaskError(Exception):
    """Named like Ray's wrapper of a worker's exception."""


def _wrapped_worker_error() -> UserCodeException:
    inner = RayTaskError('ray::MapBatches(f)() (pid=1)\n  File "x.py", line 4\n    raise OSError(...)\n'
                         "botocore.exceptions.EndpointConnectionError: Could not connect to the endpoint URL: "
                         '"http://h/b"')
    outer = UserCodeException("UDF failed to process a data block.\nTo change retry attempts, configure it.")
    outer.__cause__ = inner
    return outer


def test_failure_explanation_finds_the_worker_error_behind_ray_wrappers():
    msg = explain_stage_failure("synthetic", _wrapped_worker_error(), "s3://b/run")
    assert msg.startswith("Stage 'synthetic' failed: EndpointConnectionError: Could not connect to the endpoint URL")
    assert "storage problem with 's3://b/run'" in msg and "re-run the same command" in msg


def test_failure_explanation_gives_no_storage_hint_for_other_errors():
    msg = explain_stage_failure("entities", RayTaskError("ray::f()\nValueError: bad entity list"), "/tmp/run")
    assert msg.startswith("Stage 'entities' failed: ValueError: bad entity list.") and "storage" not in msg


def test_root_cause_without_an_error_line_is_the_innermost_exception():
    outer = RuntimeError("something went wrong\nwhile mapping")
    outer.__cause__ = KeyError("doc_id")
    assert root_cause(outer) == "KeyError: 'doc_id'"


def test_worker_failures_are_told_apart_from_driver_bugs():
    assert is_worker_failure(_wrapped_worker_error())
    assert is_worker_failure(RayTaskError("ray::f()"))
    assert not is_worker_failure(KeyError("a driver-side bug"))
    bug = ValueError("raised while handling")
    bug.__context__ = RayTaskError("ray::f()")
    assert is_worker_failure(bug)  # the chain is followed through __context__ too
