#!/usr/bin/env bash
# ansible-test units, offline, over the plugin tests (tests/unit/plugins/, laid out as
# ansible-test expects): like scripts/ansible-test-sanity.sh, the collection's own files are
# copied to ansible_collections/prng/cluster in a temp tree with the plugin tests, their
# fixtures and tests/unit/requirements.txt; the worker package's tests stay in tests/unit/
# (pytest runs both: pytest.ini). Extra arguments go to ansible-test (e.g. a test file).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$HOME/.ansible/test/cache"
mkdir -p "$cache"
cat > "$cache/get_pip_24_2.py" <<'PY'
import subprocess, sys
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
if args:
    subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
PY
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/prng/cluster"
mkdir -p "$dest"
rsync -a --exclude .git --exclude .venv --exclude collections --exclude workers \
  --exclude bench --exclude scripts --exclude molecule --exclude docs --exclude runs --exclude demo/out \
  --include '/tests/' --include '/tests/unit/' --include '/tests/unit/plugins/***' \
  --include '/tests/unit/requirements.txt' --include '/tests/fixtures/***' --exclude '/tests/*' \
  --exclude '/tests/unit/*' --exclude __pycache__ --exclude '*.egg-info' "$root/" "$dest/"
cd "$dest"
git init -q . && git add -A >/dev/null 2>&1
ansible-test units --venv --python 3.11 "$@"
