#!/usr/bin/env bash
# ansible-test, offline:  scripts/ansible-test.sh sanity|units [ansible-test arguments]
# ansible-test wants the collection under ansible_collections/<ns>/<name> and downloads a
# pip bootstrap for --venv; we copy the collection's own files (what `ansible-galaxy
# collection build` ships) to a temp tree and give it a local stand-in bootstrap that uses
# ensurepip (see ../shared/TESTING.md). `units` also copies the plugin tests
# (tests/unit/plugins/, laid out as ansible-test expects), their fixtures and
# tests/unit/requirements.txt; the worker package's tests stay in tests/unit/ (pytest runs
# both: pytest.ini).
set -euo pipefail
command="${1:-}"
case "$command" in
  sanity) tests=(--exclude demo --include '/tests/sanity/***') ;;
  units) tests=(--exclude demo/out --include '/tests/unit/' --include '/tests/unit/plugins/***'
                --include '/tests/unit/requirements.txt' --include '/tests/fixtures/***' --exclude '/tests/unit/*') ;;
  *) echo "error: usage: scripts/ansible-test.sh sanity|units [ansible-test arguments]" >&2; exit 2 ;;
esac
shift
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
  --exclude bench --exclude scripts --exclude molecule --exclude docs --exclude runs \
  --include '/tests/' "${tests[@]}" --exclude '/tests/*' \
  --exclude __pycache__ --exclude '*.egg-info' "$root/" "$dest/"
cd "$dest"
git init -q . && git add -A >/dev/null 2>&1
ansible-test "$command" --venv --python 3.11 "$@"
