"""``async def`` tests in this folder run on a fresh event loop each, bounded in time.

The project does not depend on pytest-asyncio; this hook is all the xDS tests need: the gRPC server,
its clients, the test app and (through threads) the real Envoy all share the test's loop, and a test
that hangs fails after :data:`ASYNC_TEST_TIMEOUT` seconds instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest

ASYNC_TEST_TIMEOUT = 60.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**arguments), ASYNC_TEST_TIMEOUT))
    return True
