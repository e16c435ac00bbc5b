"""Which modules are compiled, whether the compiled builds are the ones loaded, and when to rebuild them.

The per-request path is Python source compiled by Cython in its pure-Python mode: each module
listed here is a plain ``.py`` file with a ``.pxd`` beside it declaring C types, built into an
extension module of the same name that Python imports instead of the ``.py``. Setting
``TULLE_PURE_PYTHON=1`` before Tulle is imported loads the ``.py`` sources instead (for debugging,
profiling in Python, or a machine without a C compiler): the import hook at the top of
``tulle/__init__.py`` does it. ``setup.py`` builds this list; the test suite checks that every module
on it is loaded compiled unless that switch is set.

The build half (``source_digest``, ``sync_build``) is for a source checkout: ``scripts/test.sh`` and
``scripts/demo.sh`` run ``python -m tulle.compiled build --stamp .venv/compiled-sources.json``, which
rebuilds the extensions whenever a file they are built from changed since the last build.

``python -m tulle.compiled`` prints each module and whether it is loaded compiled or pure.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

# Module names, in no particular order. Adding a module here is all setup.py needs to build it.
MODULES: tuple[str, ...] = (
    "tulle.filters.http.base",
    "tulle.filters.http.fault.config",
    "tulle.filters.http.fault.filter",
    "tulle.filters.http.local_ratelimit.config",
    "tulle.filters.http.local_ratelimit.filter",
    "tulle.filters.http.router.config",
    "tulle.filters.http.router.filter",
    "tulle.filters.http.router.upstream_request",
    "tulle.filters.network.http_connection_manager.config",
    "tulle.filters.network.http_connection_manager.connection_manager",
    "tulle.filters.network.http_connection_manager.http2_connection",
    "tulle.filters.network.http_connection_manager.stats",
    "tulle.filters.network.local_ratelimit.filter",
    "tulle.http.codec_callbacks",
    "tulle.http.headers",
    "tulle.http.http1",
    "tulle.http.http1_parser",  # a .pyx binding of llhttp (vendor/llhttp); http1_parser.py is its pure peer
    "tulle.http.http2_codec",  # a .pyx binding of libnghttp2 (Debian's libnghttp2-dev)
    "tulle.router.hash_policy",
    "tulle.router.header_mutation",
    "tulle.router.matchers",
    "tulle.router.route_table",
    "tulle.runtime.entry",
    "tulle.stats.store",
    "tulle.stream_info",
    "tulle.upstream.cluster_manager",
    "tulle.upstream.cluster_stats",
    "tulle.upstream.host",
    "tulle.upstream.http2_pool",
    "tulle.upstream.http_pool",
    "tulle.upstream.load_balancer",
    "tulle.upstream.outlier_detection",
    "tulle.upstream.request_encoder",
    "tulle.upstream.resource_manager",
)

PURE_PYTHON_ENV = "TULLE_PURE_PYTHON"

# The checkout this file sits in (setup.py, src/, vendor/); meaningless for an installed wheel.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def pure_python_requested() -> bool:
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def is_compiled(module_name: str) -> bool:
    """True when ``module_name`` is imported from an extension module (imports it if needed)."""
    module = sys.modules.get(module_name)
    if module is None:
        module = __import__(module_name, fromlist=["_"])
    return (getattr(module, "__file__", None) or "").endswith(tuple(EXTENSION_SUFFIXES))


def status() -> dict[str, bool]:
    """Each compiled-path module and whether it is loaded compiled."""
    return {name: is_compiled(name) for name in MODULES}


def build_info() -> dict[str, object]:
    """What this process runs: ``{"pure_python": bool, "modules": {name: "compiled" | "pure"}}``."""
    return {
        "pure_python": pure_python_requested(),
        "modules": {name: "compiled" if compiled else "pure" for name, compiled in status().items()},
    }


def summary() -> str:
    """One line for ``tulle --version`` and logs: ``compiled hot path: 2/2 modules compiled``."""
    loaded = status()
    text = f"compiled hot path: {sum(loaded.values())}/{len(loaded)} modules compiled"
    return text + (f" ({PURE_PYTHON_ENV} is set)" if pure_python_requested() else "")


# --------------------------------------------------------------------------- rebuilding a checkout


def manifest(root: Path = SOURCE_ROOT) -> tuple[str, ...]:
    """``MODULES`` as written in ``root``'s ``src/tulle/compiled.py`` (read, not imported)."""
    tree = ast.parse((Path(root) / "src" / "tulle" / "compiled.py").read_text())
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "MODULES" and node.value is not None:
            return tuple(ast.literal_eval(node.value))
    raise ValueError(f"no MODULES in {root}/src/tulle/compiled.py")


def source_files(root: Path = SOURCE_ROOT) -> list[Path]:
    """Every file the extensions are built from: setup.py, this manifest, each compiled module's
    .py/.pxd/.pyx, every .pxd/.pxi under src/tulle (cimported declarations), C sources under vendor/."""
    root = Path(root)
    package = root / "src" / "tulle"
    files = {root / "setup.py", package / "compiled.py"}
    for name in manifest(root):
        base = root / "src" / name.replace(".", "/")
        files.update(base.with_suffix(suffix) for suffix in (".py", ".pxd", ".pyx"))
    for pattern in ("*.pxd", "*.pxi"):
        files.update(package.rglob(pattern))
    vendor = root / "vendor"
    if vendor.is_dir():
        files.update(path for path in vendor.rglob("*") if path.suffix in (".c", ".h"))
    return sorted(path for path in files if path.is_file())


def file_digests(root: Path = SOURCE_ROOT) -> dict[str, str]:
    """Path relative to ``root`` -> sha256 of its content, for every file of ``source_files``."""
    root = Path(root)
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in source_files(root)}


def source_digest(root: Path = SOURCE_ROOT) -> str:
    """One digest over the names and contents of every file the extensions are built from."""
    digest = hashlib.sha256()
    for name, content in sorted(file_digests(root).items()):
        digest.update(f"{name}\0{content}\n".encode())
    return digest.hexdigest()


def extension_files(root: Path, module_name: str) -> list[Path]:
    """The extension modules for ``module_name`` that this interpreter would import."""
    base = Path(root) / "src" / module_name.replace(".", "/")
    return [path for path in (base.parent / (base.name + suffix) for suffix in EXTENSION_SUFFIXES)
            if path.is_file()]


def missing_extensions(root: Path = SOURCE_ROOT) -> list[str]:
    """Modules of the manifest with no extension module beside their source (they would load pure)."""
    return [name for name in manifest(root) if not extension_files(root, name)]


def orphan_extensions(root: Path = SOURCE_ROOT) -> list[Path]:
    """Extension modules under src/tulle whose module is no longer in the manifest: Python would
    still import them instead of the .py, so a build removes them."""
    package = Path(root) / "src" / "tulle"
    wanted = {path for name in manifest(root) for path in extension_files(root, name)}
    # a set: "x.cpython-311-x86_64-linux-gnu.so" also matches "*.so"
    return sorted({path for suffix in EXTENSION_SUFFIXES for path in package.rglob("*" + suffix)
                   if path not in wanted})


def read_stamp(stamp: Path) -> dict[str, str]:
    """The per-file digests recorded by the last successful build ({} when there is none)."""
    try:
        files = json.loads(Path(stamp).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return files if isinstance(files, dict) else {}


def changed_sources(root: Path, recorded: dict[str, str]) -> list[str]:
    """Files added, changed or removed since ``recorded`` (relative to ``root``)."""
    current = file_digests(root)
    return sorted(name for name in set(current) | set(recorded) if recorded.get(name) != current.get(name))


def sync_build(root: Path = SOURCE_ROOT, stamp: Path | None = None, *,
               log: Callable[[str], object] = print) -> bool:
    """Rebuild the extensions in place when a source changed since the last build, or an extension
    is missing; remove extensions of modules no longer compiled. Returns True when it built.

    The build is Cython's and setuptools' incremental one (``setup.py build_ext --inplace``), which
    goes by modification times: cythonize regenerates a module when its .py, its .pxd or a .pxd it
    cimports is newer than its .c, and build_ext recompiles an extension whose .c or other sources
    are newer than it. Files whose content changed since the recorded build get their modification
    time set to now first, so a change is rebuilt even when it came with an old timestamp (a restored
    backup, ``cp -p``); when setup.py or a vendored header changed or a source was removed, which
    those timestamps cannot see, every module is rebuilt."""
    root = Path(root)
    stamp = Path(stamp) if stamp is not None else root / ".venv" / "compiled-sources.json"
    for orphan in orphan_extensions(root):
        log(f"tulle: removing {orphan.relative_to(root)}: its module is no longer compiled")
        orphan.unlink()
    recorded = read_stamp(stamp)
    changed = changed_sources(root, recorded)
    missing = missing_extensions(root)
    if not changed and not missing:
        return False
    if recorded:  # with no record, the timestamps are all there is to go by
        touch = {root / name for name in changed}
        if any(name == "setup.py" or name.endswith(".h") or not (root / name).exists() for name in changed):
            touch.update(root / "src" / (module.replace(".", "/") + suffix)
                         for module in manifest(root) for suffix in (".py", ".pyx"))
        now = time.time()
        for path in touch:
            if path.is_file():
                os.utime(path, (now, now))
    current = file_digests(root)  # before building: a file edited during the build is rebuilt next time
    log(f"tulle: building the compiled hot path ({len(changed)} source(s) changed, "
        f"{len(missing)} extension(s) missing)")
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=root, check=True)
    still_missing = missing_extensions(root)
    if still_missing:
        raise RuntimeError(f"the build made no extension module for: {', '.join(still_missing)}")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"digest": source_digest(root), "files": current}, indent=1) + "\n")
    return True


def record_build(root: Path = SOURCE_ROOT, stamp: Path | None = None, *,
                 log: Callable[[str], object] = print) -> bool:
    """After ``pip install -e .`` (which has just compiled every extension from the current sources),
    record their digests without building again; builds when an extension is missing after all.
    Returns True when it built."""
    root = Path(root)
    stamp = Path(stamp) if stamp is not None else root / ".venv" / "compiled-sources.json"
    if missing_extensions(root):
        return sync_build(root, stamp, log=log)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"digest": source_digest(root), "files": file_digests(root)}, indent=1) + "\n")
    return False


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tulle.compiled", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("status", help="each compiled-path module and whether it loads compiled or pure (default)")
    digest = sub.add_parser("digest", help="the digest of the sources the extensions are built from")
    digest.add_argument("--root", type=Path, default=SOURCE_ROOT)
    build = sub.add_parser("build", help="rebuild the extensions in place if their sources changed")
    build.add_argument("--root", type=Path, default=SOURCE_ROOT)
    build.add_argument("--just-installed", action="store_true", help="pip install -e has just built "
                       "every extension: record the sources' digests without building again")
    build.add_argument("--stamp", type=Path, help="where the last build's digests are kept "
                       "(default: .venv/compiled-sources.json in the checkout)")
    args = parser.parse_args(argv)
    if args.command == "digest":
        print(source_digest(args.root))
        return 0
    if args.command == "build":
        if not (args.root / "setup.py").is_file():
            print(f"tulle: {args.root} is not a source checkout (no setup.py)", file=sys.stderr)
            return 2
        try:
            build_now = record_build if args.just_installed else sync_build
            build_now(args.root, args.stamp, log=lambda text: print(text, file=sys.stderr))
        except (subprocess.CalledProcessError, RuntimeError) as exc:
            print(f"tulle: building the compiled hot path failed: {exc}", file=sys.stderr)
            return 1
        return 0
    for name, kind in build_info()["modules"].items():  # type: ignore[union-attr]
        print(f"{name}: {kind}")
    print(summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
