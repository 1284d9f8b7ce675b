"""The harness of inner sessions (tests/inner.py): an in-process run leaves this worker as it found it."""
import os

from semgap.client.modes import remote_cache

from .conftest import INNER_CONFTEST
from .inner import run_pytest

FAULTS = INNER_CONFTEST + """
import os
from semgap.client.modes import remote_cache
remote_cache.RemoteCacheMode.decode_one_token = None
remote_cache.ADDED_ON_PURPOSE = 1
del remote_cache.RemoteCacheMode.name
os.geteuid = lambda: 1000
"""


def test_what_an_inner_conftest_patches_is_put_back_after_its_run(suite):
    suite.makeconftest(FAULTS)
    before = (remote_cache.RemoteCacheMode.decode_one_token, remote_cache.RemoteCacheMode.name, os.geteuid)
    result = run_pytest(suite, "--collect-only", "-q")
    assert result.ret == 0, result.stdout.str()[-2000:]
    assert (remote_cache.RemoteCacheMode.decode_one_token, remote_cache.RemoteCacheMode.name, os.geteuid) == before
    assert not hasattr(remote_cache, "ADDED_ON_PURPOSE")
