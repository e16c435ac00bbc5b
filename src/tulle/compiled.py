"""Which modules are compiled, and whether the compiled builds are the ones loaded.

The per-request path is Python source compiled by Cython in its pure-Python mode: each module
listed here is a plain ``.py`` file with a ``.pxd`` beside it declaring C types, built into an
extension module of the same name that Python imports instead of the ``.py``. Setting
``TULLE_PURE_PYTHON=1`` before Tulle is imported loads the ``.py`` sources instead (for debugging,
profiling in Python, or a machine without a C compiler). ``setup.py`` builds this list; the test
suite checks that every module on it is loaded compiled unless that switch is set.
"""

from __future__ import annotations

import os
import sys

# Module names, in no particular order. Adding a module here is all setup.py needs to build it.
MODULES: tuple[str, ...] = (
    "tulle.filters.http.base",
    "tulle.http.headers",
    "tulle.http.http1",
    "tulle.stats.store",
    "tulle.stream_info",
)

PURE_PYTHON_ENV = "TULLE_PURE_PYTHON"


def pure_python_requested() -> bool:
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def is_compiled(module_name: str) -> bool:
    """True when ``module_name`` is imported from an extension module (imports it if needed)."""
    module = sys.modules.get(module_name)
    if module is None:
        module = __import__(module_name, fromlist=["_"])
    return not (getattr(module, "__file__", "") or "").endswith((".py", ".pyc"))


def status() -> dict[str, bool]:
    """Each compiled-path module and whether it is loaded compiled."""
    return {name: is_compiled(name) for name in MODULES}
