"""Failure reports that outlive a cut-short run (gpu_suite.sh's tests step), imported by conftest.py.

On a GPU lease the tests step has a hard time limit, and pytest prints its tracebacks only at the end of the
session: lease 4's step was killed by a test that hung on a dead CUDA context, and its other failures left
their names but no tracebacks. Two environment variables, both off by default:

* ``CNX_FAILURE_LOG=FILE``: each failed report (setup, call or teardown) is appended to FILE as it arrives,
  with its traceback -- by pytest-xdist's controller when there are workers, so once per failure.
* ``CNX_TEST_TIMEOUT=S``: a test still running after S seconds has every thread's stack written (to the
  failure log, else stderr) and its process ended. pytest-xdist then reports that test as crashed and starts a
  new worker, so the others still run; pytest-timeout does the same where it is installed, which the GPU
  machine's Python does not promise.
"""
from __future__ import annotations

import faulthandler
import os
import sys

import pytest

_FAILURE_LOG = os.environ.get("CNX_FAILURE_LOG") or None


def _timeout() -> float:
    text = os.environ.get("CNX_TEST_TIMEOUT", "")
    try:
        seconds = float(text) if text else 0.0
    except ValueError:
        raise pytest.UsageError(f"CNX_TEST_TIMEOUT={text!r}: a number of seconds") from None
    return seconds


_controller = True


def pytest_configure(config):
    global _controller
    _controller = not hasattr(config, "workerinput")  # an xdist worker forwards its reports to the controller


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    seconds = _timeout()
    if seconds <= 0:
        yield
        return
    # faulthandler writes from its own thread with the GIL not needed: it fires even inside a CUDA call.
    out = open(_FAILURE_LOG, "a") if _FAILURE_LOG else sys.stderr
    faulthandler.dump_traceback_later(seconds, exit=True, file=out)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if out is not sys.stderr:
            out.close()


def pytest_runtest_logreport(report):
    if _FAILURE_LOG and _controller and report.failed:
        with open(_FAILURE_LOG, "a") as f:
            f.write(f"==== FAILED {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")
