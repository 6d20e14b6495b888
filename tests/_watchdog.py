"""Failure reports that outlive a cut-short run (gpu_suite.sh's tests step), imported by conftest.py.

On a GPU lease the tests step has a hard time limit, and pytest prints its tracebacks only at the end of the
session: lease 4's step was killed by a test that hung on a dead CUDA context, and its other failures left
their names but no tracebacks. Two environment variables, both off by default:

* ``CNX_FAILURE_LOG=FILE``: each failed report (setup, call or teardown) is appended to FILE as it arrives,
  with its traceback -- by pytest-xdist's controller when there are workers, so once per failure.
* ``CNX_TEST_TIMEOUT=S``: a test still running after S seconds has every thread's stack written (to the
  failure log, else stderr) and its process ended (0 or inf: no limit; not with pytest's own
  ``faulthandler_timeout``, which shares faulthandler's one timer). pytest-xdist then reports that test as crashed and starts a
  new worker, so the others still run; pytest-timeout does the same where it is installed, which the GPU
  machine's Python does not promise.
"""
from __future__ import annotations

import faulthandler
import math
import os
import sys

import pytest

_FAILURE_LOG = os.environ.get("CNX_FAILURE_LOG") or None
_MAX_SECONDS = 24 * 3600  # past faulthandler's time_t there is no watchdog to arm; a day is no limit either
_controller = True
_seconds = 0.0  # CNX_TEST_TIMEOUT, read once; 0: off


def _timeout(text: str) -> float:
    """CNX_TEST_TIMEOUT's seconds: empty, 0, a negative number or inf turn the watchdog off."""
    try:
        seconds = float(text) if text.strip() else 0.0
    except ValueError:
        seconds = math.nan
    if seconds <= 0 or seconds == math.inf:
        return 0.0
    if not seconds <= _MAX_SECONDS:  # (NaN too)
        raise pytest.UsageError(f"CNX_TEST_TIMEOUT={text!r}: a number of seconds, at most {_MAX_SECONDS} (or 0 "
                                "or inf for no limit)")
    return seconds


def pytest_configure(config):
    global _controller, _seconds
    _controller = not hasattr(config, "workerinput")  # an xdist worker forwards its reports to the controller
    _seconds = _timeout(os.environ.get("CNX_TEST_TIMEOUT", ""))
    # faulthandler holds one timer per process: pytest's own faulthandler_timeout would replace ours unseen.
    if _seconds and float(config.getini("faulthandler_timeout") or 0) > 0:
        raise pytest.UsageError("CNX_TEST_TIMEOUT and pytest's faulthandler_timeout cannot both be set: "
                                "faulthandler runs one timer per process")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    seconds = _seconds
    if not seconds:
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
