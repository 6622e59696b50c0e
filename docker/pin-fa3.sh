#!/usr/bin/env bash
# Resolve a FlashAttention git ref (tag or branch) to its commit and write it into
# docker/Dockerfile's `ARG FA3_COMMIT=` line; the FA3 build stage checks out exactly that commit.
#
#   docker/pin-fa3.sh            # the tip of main
#   docker/pin-fa3.sh v2.8.3     # a release tag
#
# Pick a commit whose hopper/ builds with CUDA 13.0 and torch 2.13 (the image's); the stage fails
# loudly otherwise, and --build-arg BUILD_FA3=0 builds the image without FA3.
set -euo pipefail

DOCKERFILE=${DOCKERFILE:-$(dirname "${BASH_SOURCE[0]}")/Dockerfile}
REPO=${FA3_REPO:-https://github.com/Dao-AILab/flash-attention.git}
ref=${1:-main}
die() { echo "pin-fa3.sh: $*" >&2; exit 1; }

grep -qE '^ARG FA3_COMMIT=' "$DOCKERFILE" || die "$DOCKERFILE: no 'ARG FA3_COMMIT=' line"
# a tag's peeled line (^{}) names the commit; a branch's line names it directly
refs=$(git ls-remote "$REPO" "refs/tags/$ref" "refs/tags/$ref^{}" "refs/heads/$ref") \
    || die "git ls-remote $REPO failed"
commit=$(awk '$2 ~ /\^\{\}$/ {print $1; found=1; exit} END {}' <<<"$refs")
[[ -n $commit ]] || commit=$(awk 'NR==1 {print $1}' <<<"$refs")
[[ $commit =~ ^[0-9a-f]{40}$ ]] || die "$ref: not found in $REPO"

tmp=$(mktemp)
awk -v c="$commit" -v r="$ref" '
    /^# resolved by docker\/pin-fa3.sh/ {print "# resolved by docker/pin-fa3.sh from " r " (a full 40-hex commit); the build refuses anything else"; next}
    /^ARG FA3_COMMIT=/ {print "ARG FA3_COMMIT=" c; next}
    {print}' "$DOCKERFILE" > "$tmp"
cat "$tmp" > "$DOCKERFILE"
rm -f "$tmp"
echo "pinned: FA3_COMMIT=$commit ($ref)"
