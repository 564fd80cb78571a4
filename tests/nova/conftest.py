"""Nova leaves non-daemon threads behind: end the test process ourselves.

Run with ``tox -e nova`` (Nova from PyPI); without Nova these tests skip.
"""

import os
import sys

import pytest


_status = {}


def pytest_sessionfinish(session, exitstatus):
    _status['code'] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if 'code' in _status and 'nova' in sys.modules:
        # os._exit skips Python's buffered output: flush the summary first.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_status['code'])
