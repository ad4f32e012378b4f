#!/usr/bin/env bash
# Host this bundle in MONAI Label 0.8.5 (monaibundle app) on 127.0.0.1, in one command:
#
#   tools/serve_monailabel.sh [--studies DIR] [--port N] [--workdir DIR]
#
# --studies  images to serve (default: data/demo): a neurite-oasis folder (<subject>/slice_norm.nii.gz, served as
#            image id <subject>) and/or a flat folder of .nii.gz / .nii files (image id = file name without the
#            extension). It is only read: MONAI Label gets a copy of the images in <workdir>/studies, where it also
#            keeps its lock file, datastore index and the labels users save (kept from one start to the next).
# --port     port on 127.0.0.1 (default 8000)
# --workdir  folder owned by this script (default: monailabel_app/ in the bundle, git-ignored): the app (the
#            monaibundle sample app from the monailabel wheel plus this checkout's configs, scripts and weights,
#            rebuilt at each start), the studies copy, MONAI Label's sessions and logs. Never data/ or --studies.
#
# The server runs with MONAI Label's own environment: $METASEG_MONAILABEL_PYTHON when set, otherwise
# .venv-monailabel, built or reused by .ci/monailabel_env.sh (pinned by requirements-monailabel.txt).
#
# Its REST API is wrapped by tools/monailabel_guard.py (copied into the app): requests from other web pages (an
# Origin other than http://127.0.0.1:PORT and http://localhost:PORT, or than the comma-separated list in
# METASEG_MONAILABEL_CORS_ORIGINS when set), image ids or label tags that are paths, bodies over
# METASEG_MONAILABEL_MAX_UPLOAD_MB (128) MiB, images over METASEG_MONAILABEL_MAX_VOXELS (2**25) voxels and files
# that are not NIfTI get a 4xx with a message; the studies' images are never replaced or deleted; /infer reads
# datastore images only and returns the label with the input's shape and affine.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bundle_name=metaseg_brain_mri_segmentation  # the model id served by MONAI Label (the Model Zoo package's name)
marker=.metaseg-monailabel

usage() { sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() {
    echo "serve_monailabel: $*" >&2
    exit 2
}

studies=$root/data/demo
port=8000
workdir=$root/monailabel_app
while [ $# -gt 0 ]; do
    case "$1" in
        --studies | --port | --workdir)
            [ $# -ge 2 ] || die "$1 needs a value"
            declare "${1#--}=$2"
            shift 2
            ;;
        --studies=* | --port=* | --workdir=*)
            key=${1%%=*}
            declare "${key#--}=${1#*=}"
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "--port must be 1-65535, got '$port'"
[ -d "$studies" ] || die "studies folder $studies does not exist (the demo data: python -m monai.bundle run prepare_data --config_file configs/train.json)"
studies=$(cd "$studies" && pwd -P)
workdir=$(realpath -m "$workdir")
case "$workdir/" in
    "$studies"/* | "$root/data/"*) die "--workdir $workdir lies inside the studies or data folder; name another folder" ;;
esac
case "$studies/" in
    "$workdir"/*) die "--studies $studies lies inside --workdir $workdir; name another folder" ;;
esac
if [ -d "$workdir" ] && [ -n "$(ls -A "$workdir")" ] && [ ! -f "$workdir/$marker" ]; then
    die "--workdir $workdir is not empty and was not made by this script; name an empty or new folder"
fi
view=$workdir/studies
if [ -f "$workdir/$marker" ] && [ "$(cat "$workdir/$marker")" != "$studies" ]; then
    die "--workdir $workdir serves $(cat "$workdir/$marker") (its saved labels belong to those images); name another --workdir for $studies"
fi
# the images to serve: (source file, image file name in the studies copy)
shopt -s nullglob
sources=()
names=()
for image in "$studies"/*/slice_norm.nii.gz; do
    sources+=("$image")
    names+=("$(basename "$(dirname "$image")").nii.gz")
done
for image in "$studies"/*.nii.gz "$studies"/*.nii; do
    sources+=("$image")
    names+=("$(basename "$image")")
done
[ "${#names[@]}" -gt 0 ] || die "no images in $studies: expected <subject>/slice_norm.nii.gz (neurite-oasis layout) or *.nii.gz / *.nii files"
duplicate=$(printf '%s\n' "${names[@]}" | sed 's/\.nii\(\.gz\)\{0,1\}$//' | sort | uniq -d | head -1)
[ -z "$duplicate" ] || die "two images in $studies would both be served as $duplicate; rename one"

mkdir -p "$workdir"
echo "$studies" >"$workdir/$marker"

# MONAI Label's environment
if [ -n "${METASEG_MONAILABEL_PYTHON:-}" ]; then
    ml_python=$METASEG_MONAILABEL_PYTHON
else
    status=0
    bash "$root/.ci/monailabel_env.sh" || status=$?
    [ "$status" -eq 0 ] || die "MONAI Label's environment could not be built (.ci/monailabel_env.sh exit $status)"
    ml_python=$root/.venv-monailabel/bin/python
fi
[ -x "$ml_python" ] || die "no python at $ml_python"
sample_app=$(env -u PYTHONPATH "$ml_python" -c 'import sys; print(sys.prefix)')/monailabel/sample-apps/monaibundle
[ -f "$sample_app/main.py" ] || die "no monaibundle sample app at $sample_app; is monailabel installed in $ml_python's environment?"

# the app: the sample app plus this checkout's bundle (copies, so that nothing the server does reaches the checkout)
app=$workdir/app
rm -rf "$app"
cp -r "$sample_app" "$app"
rm -rf "$app/__pycache__"
bundle=$app/model/$bundle_name
mkdir -p "$bundle/configs" "$bundle/models"
cp "$root"/configs/*.json "$root"/configs/*.conf "$bundle/configs/"
(cd "$root" && find scripts -name '*.py' -exec cp --parents {} "$bundle/" \;)
cp "$root/models/model.pt" "$bundle/models/"
cp "$root/LICENSE" "$bundle/"
# the checks around MONAI Label's REST API (origins, ids, upload sizes, datastore-only inference, the label's grid)
cp "$root/tools/monailabel_guard.py" "$app/metaseg_guard.py"

# the studies copy: images are copied, not linked (MONAI Label resolves links, so deleting or re-uploading an image
# through its REST API would reach the original file); labels/ and the datastore index stay
mkdir -p "$view"
find "$view" -maxdepth 1 -type f \( -name '*.nii.gz' -o -name '*.nii' \) -delete
for i in "${!sources[@]}"; do
    cp -p "${sources[$i]}" "$view/${names[$i]}"
done

echo "MetaSeg in MONAI Label: http://127.0.0.1:$port/ (${#names[@]} images from $studies; app, studies copy and labels in $workdir; Ctrl-C stops it)"
cd "$workdir"
# MONAI Label's own settings: sessions (uploads outside the datastore, archives unpacked) are off, the datastore
# holds NIfTI only. Its CORS setting stops 0.8.5 at start-up, so the guard sets the origins (METASEG_MONAILABEL_*).
exec env -u PYTHONPATH -u VIRTUAL_ENV -u MONAI_LABEL_CORS_ORIGINS PYTHONPATH="$app" \
    MONAI_LABEL_SESSION_PATH="$workdir/sessions" MONAI_LABEL_SESSIONS=false \
    MONAI_LABEL_DATASTORE_FILE_EXT='["*.nii.gz","*.nii"]' \
    "$ml_python" -m monailabel.main start_server --app "$app" --studies "$view" --host 127.0.0.1 --port "$port" \
    --conf models "$bundle_name" --conf zoo_source local --conf sam2 false --conf skip_trainers true \
    --uvicorn_app metaseg_guard:app
