# Sourced by run.sh and check_reuse.sh: installs what the benchmark needs on Debian.

# ensure_commands cmd:package ...  installs the packages of missing commands (one apt-get update at most)
ensure_commands() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    # python3 without venv/ensurepip cannot create the project venv (Debian splits it out)
    if [[ ! -x .venv/bin/python ]] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing packages: ${missing[*]} (run as root, or install them with apt-get)" >&2
        return 1
    fi
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_project_venv() {
    if [[ ! -x .venv/bin/tulle ]]; then
        echo "creating the project venv (.venv) with pip install -e ." >&2
        # a broken tulle must not stop the nginx/HAProxy baseline: its cells are then skipped with the reason
        { [[ -x .venv/bin/python ]] || python3 -m venv .venv; } && .venv/bin/pip install -q -e . \
            || echo "warning: could not install the project venv; tulle cells will be skipped" >&2
    fi
}
