# Sourced by scripts/test.sh and scripts/demo.sh (from the checkout root): make sure .venv exists, has
# Tulle installed (editable, with the dev extras) and the compiled hot path built from the current
# sources. Safe to re-run; does nothing that is already done.
#   ensure_venv "tulle, pytest"    # the argument: modules that must import, else (re)install
# With TULLE_PURE_PYTHON=1 in the environment nothing is compiled (and no compiler is needed): the
# tests and the demo then run the .py sources.

tulle_pure_python() { [ -n "${TULLE_PURE_PYTHON:-}" ] && [ "$TULLE_PURE_PYTHON" != 0 ]; }

# A C compiler, the headers of the Python in use and libnghttp2's; installed with apt-get when missing.
ensure_build_tools() {
  local include packages=()
  include=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  command -v "${CC:-cc}" >/dev/null 2>&1 || packages+=(build-essential)
  [ -f "$include/Python.h" ] || packages+=(python3-dev)
  # libnghttp2 (HTTP/2 framing, called from the compiled layer): the distribution's, with its security updates
  [ -f /usr/include/nghttp2/nghttp2.h ] || packages+=(libnghttp2-dev)
  [ "${#packages[@]}" -eq 0 ] && return 0
  local advice="install ${packages[*]} (Debian/Ubuntu), or run with TULLE_PURE_PYTHON=1 to skip compiling"
  echo "tulle: compiling the hot path needs a C compiler (${CC:-cc}) and $include/Python.h:" \
       "installing ${packages[*]}" >&2
  local sudo=
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "tulle: no apt-get on this machine: $advice" >&2; return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "tulle: not root and no sudo: $advice" >&2; return 1
    fi
    sudo=sudo
  fi
  if ! $sudo apt-get update -qq \
     || ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null; then
    echo "tulle: apt-get failed: $advice" >&2; return 1
  fi
  if ! command -v "${CC:-cc}" >/dev/null 2>&1 || [ ! -f "$include/Python.h" ] || [ ! -f /usr/include/nghttp2/nghttp2.h ]; then
    # e.g. a Python built from source or by pyenv without its headers: python3-dev is the system's
    echo "tulle: still no C compiler or no $include/Python.h after installing ${packages[*]};" \
         "install the headers of $(command -v python3), or run with TULLE_PURE_PYTHON=1" >&2
    return 1
  fi
}

ensure_venv() {
  local imports="$1"
  tulle_pure_python || ensure_build_tools
  python3 -m venv .venv >/dev/null 2>&1 || python3 -m venv .venv
  if ! .venv/bin/python -c "import $imports" >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
    touch .venv/.installed
    # that install compiled every extension from these sources: record them instead of building twice
    tulle_pure_python || .venv/bin/python -m tulle.compiled build --just-installed --stamp .venv/compiled-sources.json
  fi
  # Rebuild the extensions whose sources changed since the last build (a content digest per file,
  # kept in .venv): the tests and the demo must never load a missing or stale extension.
  tulle_pure_python || .venv/bin/python -m tulle.compiled build --stamp .venv/compiled-sources.json
}
