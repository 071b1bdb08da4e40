#!/usr/bin/env bash
# The test command: unit, integration (real SSH test cluster in network namespaces),
# Molecule scenarios, ansible-lint (production), ansible-test sanity and ruff, all
# through pytest so there is one verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest "$@"
