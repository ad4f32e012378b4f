#!/usr/bin/env bash
# Creates (or reuses) .venv-monailabel, the MONAI Label server's own environment, pinned by requirements-monailabel.txt.
# The environment is rebuilt whenever that file changes (its sha256 is stored inside the environment).
set -euo pipefail
cd "$(dirname "$0")/.."
env_dir=.venv-monailabel
want=$(sha256sum requirements-monailabel.txt | cut -d' ' -f1)
have=$(cat "$env_dir/.requirements.sha256" 2>/dev/null || true)
if [ "$want" != "$have" ] || [ ! -x "$env_dir/bin/python" ]; then
    echo "creating $env_dir (requirements-monailabel.txt changed or no environment yet)"
    rm -rf "$env_dir"
    python3 -m venv "$env_dir"
    "$env_dir/bin/pip" install -q -r requirements-monailabel.txt
    echo "$want" > "$env_dir/.requirements.sha256"
fi
