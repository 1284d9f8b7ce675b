"""The harness of inner sessions (tests/inner.py): an in-process run leaves this worker as it found it."""
import os

from semgap.client.modes import remote_cache

from .conftest import INNER_CONFTEST
from .inner import KEPT_MODULES, run_pytest

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


def test_a_library_an_inner_run_imported_stays_the_one_copy(suite, tmp_path_factory, monkeypatch):
    """pytester takes out the modules a session imported; a library's would then be imported a second time,
    with classes of its own, beside the first copy that other modules keep (transformers' caches did)."""
    library = tmp_path_factory.mktemp("library")
    (library / "semgap_kept_probe.py").write_text("class Probe:\n    pass\n")
    monkeypatch.syspath_prepend(str(library))
    suite.makeconftest(INNER_CONFTEST + "import semgap_kept_probe\n"
                                        "open('probe.id', 'w').write(str(id(semgap_kept_probe.Probe)))\n")
    assert run_pytest(suite, "--collect-only", "-q").ret == 0
    import semgap_kept_probe
    assert str(id(semgap_kept_probe.Probe)) == (suite.path / "probe.id").read_text()
    assert KEPT_MODULES["semgap_kept_probe"] is semgap_kept_probe
