"""Builds the compiled hot path (see src/tulle/compiled.py); everything else is in pyproject.toml.

``pip install .`` / ``pip install -e .`` compile every module listed in ``tulle.compiled.MODULES``
with Cython (pure-Python mode: the ``.py`` source plus its ``.pxd``). ``TULLE_PURE_PYTHON=1 pip
install .`` installs without compiling.
"""

from __future__ import annotations

import os
import pathlib
import sys

from setuptools import setup

ROOT = pathlib.Path(__file__).parent
SRC = ROOT / "src"

# C sources and include directories that a ``.pyx`` module needs beside its own source (paths
# relative to the repository root). Compiled with -O2 like the Cython output.
C_LIBRARIES: dict[str, dict[str, list[str]]] = {
    "tulle.http.http1_parser": {
        "sources": ["vendor/llhttp/src/api.c", "vendor/llhttp/src/http.c", "vendor/llhttp/src/llhttp.c"],
        "include_dirs": ["vendor/llhttp/include"],
    },
}


def compiled_modules() -> tuple[str, ...]:
    namespace: dict = {}
    exec((SRC / "tulle" / "compiled.py").read_text(), namespace)  # noqa: S102 - our own manifest
    return namespace["MODULES"]


def extensions() -> list:
    if os.environ.get("TULLE_PURE_PYTHON", "") not in ("", "0"):
        print("tulle: TULLE_PURE_PYTHON is set: installing without the compiled hot path", file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:  # build requirements come from pyproject.toml; a bare setup.py call may lack them
        raise SystemExit("tulle: Cython is needed to build the compiled hot path "
                         "(pip install cython, or TULLE_PURE_PYTHON=1 to install uncompiled)") from exc
    from setuptools import Extension

    modules = []
    for name in compiled_modules():
        # A .pyx (a C binding) wins over a .py of the same name: the .py is then its pure-Python peer.
        path = SRC / (name.replace(".", "/") + ".pyx")
        if not path.exists():
            path = path.with_suffix(".py")
        extra = C_LIBRARIES.get(name, {})
        modules.append(Extension(
            name, [str(path.relative_to(ROOT)), *extra.get("sources", [])],
            include_dirs=list(extra.get("include_dirs", [])),
            extra_compile_args=["-O2"],
        ))
    return cythonize(
        modules,
        language_level=3,
        compiler_directives={
            # C types come from the .pxd files; the .py annotations stay documentation for Python.
            "annotation_typing": False,
        },
        nthreads=os.cpu_count() or 1,
    )


setup(ext_modules=extensions())
