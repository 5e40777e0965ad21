"""Every agent unit test runs twice: native per-page code and pure Python.

The native ``_speedups`` extension is optional (fastpath.py); both paths
must behave the same, so the agents' tests run on each.  Without a built
extension the native run is skipped (say so, rather than pass silently).
"""

from __future__ import annotations

import pytest

from nova_dcmigrate.stream import fastpath


@pytest.fixture(autouse=True, params=["native", "python"])
def per_page_path(request: pytest.FixtureRequest):
    native = request.param == "native"
    if native and not fastpath.available():
        pytest.skip("native extension not built: %s" % fastpath.reason)
    with fastpath.forced(native):
        yield request.param
