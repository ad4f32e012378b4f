#!/usr/bin/env bash
# Creates (or reuses) .venv-monailabel, the MONAI Label server's own environment: requirements-monailabel.txt, then
# monailabel itself with --no-deps (its declared dependencies add sam2, mlflow, the whole of ITK and more, none of
# which hosting a bundle imports). The environment is rebuilt whenever that file or this script changes (their
# sha256 is stored inside the environment); a failed build is removed. No pip cache is kept: it would hold a second
# copy of the CUDA wheels.
# Exit status 3 (nothing built) when the disk has less than MONAILABEL_ENV_MIN_FREE_GB free (default 8; the
# environment takes about 6.7 GB): .ci/run then skips the hosting test and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
env_dir=.venv-monailabel
monailabel_pin="monailabel==0.8.5"
want=$(cat requirements-monailabel.txt "$0" | sha256sum | cut -d' ' -f1)
have=$(cat "$env_dir/.requirements.sha256" 2>/dev/null || true)
if [ "$want" = "$have" ] && [ -x "$env_dir/bin/python" ]; then
    exit 0
fi
rm -rf "$env_dir"
min_free_gb=${MONAILABEL_ENV_MIN_FREE_GB:-8}
free_gb=$(( $(df -Pk . | awk 'NR==2 {print $4}') / 1024 / 1024 ))
if [ "$free_gb" -lt "$min_free_gb" ]; then
    echo "not creating $env_dir: ${free_gb} GB free on $(df -P . | awk 'NR==2 {print $6}'), it needs ${min_free_gb} GB" >&2
    exit 3
fi
echo "creating $env_dir (requirements-monailabel.txt changed or no environment yet)"
trap 'rm -rf "$env_dir"' ERR
python3 -m venv "$env_dir"
"$env_dir/bin/pip" install -q --no-cache-dir -r requirements-monailabel.txt
"$env_dir/bin/pip" install -q --no-cache-dir --no-deps "$monailabel_pin"
echo "$want" > "$env_dir/.requirements.sha256"
