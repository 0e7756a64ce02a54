# Sourced by scripts/demo and scripts/test: create or reuse .venv in the repo and install purrgan into it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "purrgan: creating a virtual environment in $VENV"
    "$PY" -m venv "$VENV"
fi
install_purrgan() {  # $1: extras, e.g. "[test]" or ""
    local stamp="$VENV/.purrgan-installed$1"
    # Reinstall only when pyproject.toml changed since the last install (the package itself is editable).
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        echo "purrgan: installing purrgan$1 and its dependencies (the first time downloads PyTorch, several GB)"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT$1" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
        touch "$stamp"
    fi
}
