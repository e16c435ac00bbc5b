"""Tulle: a service mesh in Python (Envoy v3 data plane, Istio-API control plane)."""

import os as _os

# TULLE_PURE_PYTHON=1: the modules of the compiled hot path (tulle.compiled.MODULES) load from their
# .py sources even though their extension modules sit beside them. This runs before any of them is
# imported because every tulle.* import runs this package's __init__ first; forked and spawned worker
# processes inherit the environment variable, so they take the same branch.
if _os.environ.get("TULLE_PURE_PYTHON", "") not in ("", "0"):
    import sys as _sys
    from importlib.machinery import SOURCE_SUFFIXES as _SOURCE_SUFFIXES
    from importlib.machinery import FileFinder as _FileFinder
    from importlib.machinery import SourceFileLoader as _SourceFileLoader

    class _PurePythonFinder:
        """A meta-path finder that finds the compiled-path modules as source files, and nothing else.

        The manifest is read on first use rather than imported here, so that ``python -m
        tulle.compiled`` does not find its own module already imported."""

        modules: frozenset[str] | None = None

        def find_spec(self, fullname, path, target=None):
            if path is None or not fullname.startswith("tulle.") or fullname == "tulle.compiled":
                return None
            if self.modules is None:
                from tulle.compiled import MODULES

                self.modules = frozenset(MODULES)
            if fullname not in self.modules:
                return None
            for entry in path:
                spec = _FileFinder(entry, (_SourceFileLoader, _SOURCE_SUFFIXES)).find_spec(fullname)
                if spec is not None:
                    return spec
            return None

    if not any(type(finder).__name__ == "_PurePythonFinder" for finder in _sys.meta_path):
        _sys.meta_path.insert(0, _PurePythonFinder())

__version__ = "0.1.0"
