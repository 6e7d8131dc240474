# Sourced by scripts/dev and scripts/test: make sure .venv matches the requirements files.
# The venv is (re)synced when it is missing or when the hash of the requirements files differs
# from the one stored in it; pins make the sync idempotent.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"
PY="${PYTHON:-python3.11}"

requirements_hash() {
    cat "$ROOT/requirements-dev.txt" "$ROOT/requirements-runtime.txt" | sha256sum | cut -d' ' -f1
}

ensure_venv() {
    local want
    want="$(requirements_hash)"
    if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
        return 0
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating $VENV" >&2
        "$PY" -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    fi
    echo "syncing $VENV with requirements-dev.txt" >&2
    "$VENV/bin/python" -m pip install --quiet -r "$ROOT/requirements-dev.txt" >&2
    echo "$want" > "$STAMP"
}
