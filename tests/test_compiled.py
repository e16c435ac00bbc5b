"""tulle.compiled: the compiled hot path is what loads (or, asked for, the pure sources), and a checkout
is rebuilt whenever a source the extensions are built from changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import urllib.request
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from proxy_harness import ProxyProcess, free_port, http_listener, simple_route, static_cluster
from tulle import compiled
from tulle.samples import echo_server


def pure_env(pure: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(compiled.PURE_PYTHON_ENV, None)
    if pure:
        env[compiled.PURE_PYTHON_ENV] = "1"
    return env


def status_in_child(pure: bool) -> dict[str, str]:
    """The modules' build and file as a fresh interpreter loads them, with or without the switch."""
    code = ("import json, importlib, tulle.compiled as c; "
            "print(json.dumps({n: importlib.import_module(n).__file__ for n in c.MODULES}))")
    out = subprocess.run([sys.executable, "-c", code], env=pure_env(pure), capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


# --------------------------------------------------------------------------- what loads


def test_every_module_of_the_manifest_loads_compiled_in_this_run() -> None:
    if compiled.pure_python_requested():
        assert not any(compiled.status().values()), compiled.status()
        pytest.skip(f"{compiled.PURE_PYTHON_ENV} is set: this run tests the pure sources")
    # scripts/test.sh builds before testing: a module loading from .py here means a missing or broken build
    assert compiled.status() == dict.fromkeys(compiled.MODULES, True)
    assert compiled.summary() == f"compiled hot path: {len(compiled.MODULES)}/{len(compiled.MODULES)} modules compiled"


def test_the_loaded_build_is_from_the_current_sources() -> None:
    # scripts/test.sh records what it built from; a source edited since would mean a stale build is tested
    stamp = compiled.SOURCE_ROOT / ".venv" / "compiled-sources.json"
    if compiled.pure_python_requested() or not stamp.is_file():
        pytest.skip("no build of this checkout recorded by scripts/test.sh")
    assert compiled.changed_sources(compiled.SOURCE_ROOT, compiled.read_stamp(stamp)) == []
    assert compiled.missing_extensions() == []


def test_the_manifest_names_real_modules_with_their_declarations() -> None:
    root = Path(compiled.__file__).resolve().parents[1]
    for name in compiled.MODULES:
        base = root / name.replace(".", "/")
        assert base.with_suffix(".py").is_file(), f"{name}: no .py source (the pure build needs one)"
        assert base.with_suffix(".pxd").is_file() or base.with_suffix(".pyx").is_file(), (
            f"{name}: neither a .pxd nor a .pyx: compiling it unchanged would not make it faster")


def test_the_switch_loads_every_module_from_its_python_source() -> None:
    files = status_in_child(pure=True)
    assert set(files) == set(compiled.MODULES)
    assert all(path.endswith(".py") for path in files.values()), files


@pytest.mark.skipif(compiled.pure_python_requested(), reason="this run tests the pure sources")
def test_without_the_switch_a_fresh_interpreter_loads_the_extensions() -> None:
    files = status_in_child(pure=False)
    assert all(path.endswith(tuple(EXTENSION_SUFFIXES)) for path in files.values()), files


def test_both_builds_expose_the_same_names() -> None:
    # a name only the .py defines would make the pure run test something the compiled run cannot reach
    # (its own public classes and functions: what it imports from elsewhere is not its API)
    code = textwrap.dedent("""
        import json, importlib, tulle.compiled as c
        def own(name):
            module = importlib.import_module(name)
            return sorted(key for key, value in vars(module).items() if not key.startswith("_")
                          and callable(value) and getattr(value, "__module__", None) == name)
        print(json.dumps({name: own(name) for name in c.MODULES}))
    """)
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], env=pure_env(pure), capture_output=True,
                                      text=True, check=True).stdout) for pure in (False, True)]
    if compiled.pure_python_requested():
        pytest.skip("this run has no compiled build to compare with")
    for name in compiled.MODULES:
        missing = set(runs[1][name]) - set(runs[0][name]) - {"annotations", "TYPE_CHECKING"}
        assert not missing, f"{name}: only the pure source defines {sorted(missing)}"


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure"])
def test_a_real_proxy_serves_and_reports_its_build(tmp_path: Path, pure: bool) -> None:
    if not pure and compiled.pure_python_requested():
        pytest.skip("this run tests the pure sources")
    backend = echo_server.start_in_thread(name="origin")
    backend_port = backend.server_address[1]
    port = free_port()
    bootstrap = {"static_resources": {
        "listeners": [http_listener("ingress", port, simple_route("origin"))],
        "clusters": [static_cluster("origin", [backend_port])],
    }}
    saved = os.environ.get(compiled.PURE_PYTHON_ENV)
    os.environ.update(pure_env(pure))
    if not pure:
        os.environ.pop(compiled.PURE_PYTHON_ENV, None)
    try:
        with ProxyProcess(bootstrap, tmp_path, concurrency=2) as proxy:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=10) as response:
                assert response.status == 200 and response.headers["x-served-by"] == "origin"
            status, body = proxy.admin("GET", "/server_info")
    finally:
        if saved is None:
            os.environ.pop(compiled.PURE_PYTHON_ENV, None)
        else:
            os.environ[compiled.PURE_PYTHON_ENV] = saved
        backend.shutdown()
        backend.server_close()
    assert status == 200
    info = json.loads(body)["compiled_hot_path"]
    assert info["pure_python"] is pure
    assert [worker["worker"] for worker in info["workers"]] == [0, 1]
    for worker in info["workers"]:
        assert worker["modules"] == dict.fromkeys(compiled.MODULES, "pure" if pure else "compiled"), worker


# --------------------------------------------------------------------------- rebuilding a checkout

FAKE_SETUP = textwrap.dedent('''
    # Stands in for the real setup.py: "builds" each manifest module by writing its extension file
    # (recording what it was built from), so the rebuild decisions are tested without a compiler.
    import json, pathlib, sys
    root = pathlib.Path(__file__).parent
    sys.path.insert(0, str(root / "src"))
    from importlib.machinery import EXTENSION_SUFFIXES
    import ast
    tree = ast.parse((root / "src/tulle/compiled.py").read_text())
    modules = next(ast.literal_eval(node.value) for node in tree.body
                   if isinstance(node, ast.Assign) and node.targets[0].id == "MODULES")
    log = root / "builds.log"
    log.write_text(log.read_text() + "build\\n" if log.exists() else "build\\n")
    for name in modules:
        base = root / "src" / name.replace(".", "/")
        (base.parent / (base.name + EXTENSION_SUFFIXES[0])).write_text(base.with_suffix(".py").read_text())
''')


def fake_checkout(tmp_path: Path, modules: tuple[str, ...] = ("tulle.hot",)) -> Path:
    root = tmp_path / "checkout"
    package = root / "src" / "tulle"
    package.mkdir(parents=True)
    (root / "setup.py").write_text(FAKE_SETUP)
    (package / "compiled.py").write_text(f"MODULES = {modules!r}\n")
    for name in modules:
        base = root / "src" / name.replace(".", "/")
        base.with_suffix(".py").write_text("value = 1\n")
        base.with_suffix(".pxd").write_text("cdef object value\n")
    return root


def builds(root: Path) -> int:
    log = root / "builds.log"
    return log.read_text().count("build") if log.exists() else 0


def test_a_checkout_builds_once_then_only_when_a_source_changes(tmp_path: Path) -> None:
    root = fake_checkout(tmp_path)
    stamp = root / ".venv" / "compiled-sources.json"
    quiet: list[str] = []
    assert compiled.sync_build(root, stamp, log=quiet.append) is True and builds(root) == 1
    assert compiled.sync_build(root, stamp, log=quiet.append) is False and builds(root) == 1
    source = root / "src" / "tulle" / "hot.py"
    mtime = source.stat().st_mtime
    source.write_text("value = 2\n")
    os.utime(source, (mtime, mtime))  # a changed file with an old timestamp (a restored backup) still counts
    assert compiled.changed_sources(root, compiled.read_stamp(stamp)) == ["src/tulle/hot.py"]
    assert compiled.sync_build(root, stamp, log=quiet.append) is True and builds(root) == 2
    assert source.stat().st_mtime > mtime  # touched, so Cython's own timestamp check rebuilds it
    (root / "src" / "tulle" / "hot.pxd").write_text("cdef public object value\n")
    assert compiled.sync_build(root, stamp, log=quiet.append) is True and builds(root) == 3
    assert any("1 source(s) changed" in line for line in quiet)


def test_a_missing_extension_is_rebuilt_and_an_orphan_removed(tmp_path: Path) -> None:
    root = fake_checkout(tmp_path, ("tulle.hot", "tulle.old"))
    stamp = root / ".venv" / "compiled-sources.json"
    compiled.sync_build(root, stamp, log=lambda _: None)
    [extension] = compiled.extension_files(root, "tulle.hot")
    extension.unlink()
    assert compiled.missing_extensions(root) == ["tulle.hot"]
    assert compiled.sync_build(root, stamp, log=lambda _: None) is True and extension.is_file()
    (root / "src" / "tulle" / "compiled.py").write_text("MODULES = ('tulle.hot',)\n")
    [orphan] = compiled.extension_files(root, "tulle.old")
    removed: list[str] = []
    compiled.sync_build(root, stamp, log=removed.append)
    assert not orphan.exists()  # it would shadow tulle/old.py, which is no longer compiled
    assert any("no longer compiled" in line for line in removed)


def test_the_digest_covers_declarations_and_vendored_c(tmp_path: Path) -> None:
    root = fake_checkout(tmp_path)
    vendor = root / "vendor" / "lib"
    vendor.mkdir(parents=True)
    (vendor / "lib.h").write_text("int f(void);\n")
    before = compiled.source_digest(root)
    (vendor / "lib.h").write_text("long f(void);\n")
    after_header = compiled.source_digest(root)
    (root / "src" / "tulle" / "shared.pxd").write_text("cdef class Shared: pass\n")  # cimported by others
    assert len({before, after_header, compiled.source_digest(root)}) == 3


def test_a_failed_build_says_so_and_records_nothing(tmp_path: Path) -> None:
    root = fake_checkout(tmp_path)
    (root / "setup.py").write_text("raise SystemExit('tulle: compiling the hot path failed: no compiler')\n")
    stamp = root / ".venv" / "compiled-sources.json"
    result = subprocess.run([sys.executable, "-m", "tulle.compiled", "build", "--root", str(root),
                             "--stamp", str(stamp)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "building the compiled hot path failed" in result.stderr and "no compiler" in result.stderr
    assert not stamp.exists()  # the next run tries again


def test_build_refuses_what_is_not_a_checkout(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "tulle.compiled", "build", "--root", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "not a source checkout" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_python_m_build_makes_a_wheel_with_the_extensions_and_no_generated_c(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(compiled.SOURCE_ROOT), str(checkout)], check=True)
    dist = tmp_path / "dist"
    env = pure_env(False)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "-o", str(dist), str(checkout)], env=env,
                   check=True, capture_output=True)
    [wheel] = dist.glob("tulle-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    for name in compiled.MODULES:
        path = name.replace(".", "/")
        assert any(entry.startswith(path + ".") and entry.endswith(tuple(EXTENSION_SUFFIXES)) for entry in names), name
        assert path + ".py" in names  # the pure peer ships too: TULLE_PURE_PYTHON works on an installed wheel
    assert not [entry for entry in names if entry.endswith(".c")]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True)
    # the dependencies come from this run's environment, after the wheel's own site-packages (a plain
    # path in a .pth: the editable install's own .pth there is not read, so the wheel's tulle is imported)
    [site] = (venv / "lib").glob("python*/site-packages")
    (site / "tulle_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = "import tulle, tulle.compiled as c; print(tulle.__file__); c.main([])"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0].startswith(str(site))
    assert f"{len(compiled.MODULES)}/{len(compiled.MODULES)} modules compiled" in out


def test_just_installed_records_without_building_unless_an_extension_is_missing(tmp_path: Path) -> None:
    root = fake_checkout(tmp_path)
    stamp = root / ".venv" / "compiled-sources.json"
    assert compiled.record_build(root, stamp, log=lambda _: None) is True and builds(root) == 1  # none yet
    (root / "src" / "tulle" / "hot.py").write_text("value = 3\n")
    subprocess.run([sys.executable, "setup.py"], cwd=root, check=True)  # what pip install -e did
    assert compiled.record_build(root, stamp, log=lambda _: None) is False and builds(root) == 2
    assert compiled.changed_sources(root, compiled.read_stamp(stamp)) == []
    assert compiled.sync_build(root, stamp, log=lambda _: None) is False and builds(root) == 2
