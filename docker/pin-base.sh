#!/usr/bin/env bash
# Resolve the base image's tag to its registry digest and write it into docker/Dockerfile's one
# `ARG BASE_IMAGE=` line (IMAGE:TAG@sha256:...). Run it where the registry is reachable; it uses
# the first of: docker buildx imagetools, crane, skopeo, or the registry's HTTP API with curl.
#
#   docker/pin-base.sh                                     # the tag already in the Dockerfile
#   docker/pin-base.sh debian:12.15-slim
#
# The digest is that of the tag's manifest list (all platforms); the build then takes the
# linux/amd64 image from it. Check the result with `git diff docker/Dockerfile`.
set -euo pipefail

DOCKERFILE=${DOCKERFILE:-$(dirname "${BASH_SOURCE[0]}")/Dockerfile}
die() { echo "pin-base.sh: $*" >&2; exit 1; }

line=$(grep -E '^ARG BASE_IMAGE=' "$DOCKERFILE") || die "$DOCKERFILE: no 'ARG BASE_IMAGE=' line"
current=${line#ARG BASE_IMAGE=}
ref=${1:-${current%%@*}}
[[ $ref == *:* && $ref != *@* ]] || die "'$ref': expected IMAGE:TAG (e.g. debian:12.15-slim)"
repo=${ref%:*}
tag=${ref##*:}

registry_digest() {  # Docker Hub (and registries with the same token flow) through curl
    local name=$repo
    [[ $name == */* ]] || name=library/$name
    local token
    token=$(curl -fsS --max-time 20 \
        "https://auth.docker.io/token?service=registry.docker.io&scope=repository:$name:pull" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    curl -fsSI --max-time 20 -H "Authorization: Bearer $token" \
        -H 'Accept: application/vnd.oci.image.index.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "https://registry-1.docker.io/v2/$name/manifests/$tag" \
        | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest" {print $2}'
}

digest=""
if command -v docker >/dev/null && docker buildx version >/dev/null 2>&1; then
    digest=$(docker buildx imagetools inspect "$ref" --format '{{.Manifest.Digest}}') || true
elif command -v crane >/dev/null; then
    digest=$(crane digest "$ref") || true
elif command -v skopeo >/dev/null; then
    digest=$(skopeo inspect --format '{{.Digest}}' "docker://$ref") || true
elif command -v curl >/dev/null; then
    digest=$(registry_digest) || true
else
    die "need one of: docker buildx, crane, skopeo, curl"
fi
[[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || die "$ref: no digest resolved (got '${digest}')"

new="ARG BASE_IMAGE=$repo:$tag@$digest"
tmp=$(mktemp)
awk -v new="$new" '/^ARG BASE_IMAGE=/ {print new; next} {print}' "$DOCKERFILE" > "$tmp"
cat "$tmp" > "$DOCKERFILE"
rm -f "$tmp"
echo "pinned: $new"
