"""Builds the compiled hot path (see src/tulle/compiled.py); everything else is in pyproject.toml.

``pip install .`` / ``pip install -e .`` / ``python -m build --wheel`` compile every module listed in
``tulle.compiled.MODULES`` with Cython (pure-Python mode: the ``.py`` source plus its ``.pxd``).
``TULLE_PURE_PYTHON=1 pip install .`` installs without compiling. In a checkout,
``python setup.py build_ext --inplace`` rebuilds only what changed (scripts/test.sh runs it for you).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError

ROOT = pathlib.Path(__file__).parent
SRC = ROOT / "src"

NEEDS = ("a C compiler, the Python headers for this interpreter "
         f"({sysconfig.get_paths()['include']}/Python.h) and libnghttp2's (nghttp2/nghttp2.h); on Debian/Ubuntu: "
         "sudo apt-get install build-essential python3-dev libnghttp2-dev")
PURE = "TULLE_PURE_PYTHON=1 pip install . installs Tulle without compiling (the same code, slower)"

# C sources and include directories that a ``.pyx`` module needs beside its own source (paths
# relative to the repository root).
C_LIBRARIES: dict[str, dict[str, list[str]]] = {
    "tulle.http.http1_parser": {
        "sources": ["vendor/llhttp/src/api.c", "vendor/llhttp/src/http.c", "vendor/llhttp/src/llhttp.c"],
        "include_dirs": ["vendor/llhttp/include"],
    },
    # the distribution's libnghttp2 (security updates come with the OS): libnghttp2-dev to build
    "tulle.http.http2_codec": {"libraries": ["nghttp2"]},
}


def compiled_modules() -> tuple[str, ...]:
    """The manifest, loaded from its file (the package is not importable before it is installed)."""
    spec = importlib.util.spec_from_file_location("_tulle_compiled_manifest", SRC / "tulle" / "compiled.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MODULES


class BuildExt(build_ext):
    """build_ext that says what a machine needs when the C compilation fails."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:  # one compiler per CPU: ~30 modules build in half the time on 2 cores
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        headers = pathlib.Path(sysconfig.get_paths()["include"]) / "Python.h"
        if self.extensions and not headers.is_file():
            raise SystemExit(f"tulle: cannot compile the hot path: {headers} is missing.\n"
                             f"tulle: compiling needs {NEEDS}.\ntulle: {PURE}.")
        try:
            super().run()
        except (CCompilerError, CompileError, ExecError, LinkError) as exc:
            raise SystemExit(f"tulle: compiling the hot path failed: {exc}\n"
                             f"tulle: compiling needs {NEEDS}.\ntulle: {PURE}.") from exc


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
            libraries=list(extra.get("libraries", [])),
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


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
