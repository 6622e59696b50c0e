#!/usr/bin/env bash
# Make the image's base locally, from nothing but the Debian archive: a minimal Debian root
# filesystem (debootstrap --variant=minbase) imported into the Docker engine. For machines that
# cannot pull the Dockerfile's registry base; build on it with
#   docker build -f docker/Dockerfile --build-arg BASE_IMAGE=pgolf-base:bookworm-12.15 .
# (`nox -s image` does all of it). Needs root (debootstrap), debootstrap, and a Docker engine.
#
# Pinned by suite and point release: Debian's live archive keeps only the newest point release
# of a suite, and a suite's main component changes only at point releases, so "bookworm 12.15"
# names one set of package versions. The script refuses a mirror that serves another point
# release; to rebuild 12.15 after 12.16 is out, point MIRROR at Debian's snapshot archive
# (MIRROR=http://snapshot.debian.org/archive/debian/20260712T000000Z, or any instant while 12.15
# was current). The package list of the result is printed and kept in the image at
# /etc/pgolf-base.manifest.
#
# Env: SUITE (bookworm), RELEASE (12.15), MIRROR (default: the Debian archive named in
# /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list, else deb.debian.org),
# TAG (pgolf-base:SUITE-RELEASE), WORKDIR (a temp dir), FORCE=1 (rebuild an existing tag).
set -euo pipefail

SUITE=${SUITE:-bookworm}
RELEASE=${RELEASE:-12.15}
TAG=${TAG:-pgolf-base:$SUITE-$RELEASE}
DOCKER=${DOCKER:-docker}
die() { echo "make-base.sh: $*" >&2; exit 1; }

host_mirror() {
    local f
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        [[ -r $f ]] || continue
        # deb822 "URIs: URL" or one-line "deb URL SUITE ...": the first archive that is not -security
        awk '/^URIs:/ {print $2} /^deb / {print $2}' "$f" | grep -v -- '-security' | head -n 1
        return 0
    done
}
MIRROR=${MIRROR:-$(host_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MIRROR=${MIRROR%/}

if [[ ${FORCE:-0} != 1 ]] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    echo "make-base.sh: $TAG exists (FORCE=1 rebuilds it)"
    exit 0
fi
# The pin: the mirror must serve the pinned point release of the suite.
release_file=$(python3 - "$MIRROR/dists/$SUITE/Release" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=60) as r:
        sys.stdout.write(r.read().decode("utf-8", "replace"))
except Exception as e:
    sys.exit(f"{sys.argv[1]}: {e}")
EOF
) || die "cannot read $MIRROR/dists/$SUITE/Release"
served=$(awk -F': ' '$1 == "Version" {print $2}' <<<"$release_file")
date=$(awk -F': ' '$1 == "Date" {print $2}' <<<"$release_file")
[[ $served == "$RELEASE" ]] || die "$MIRROR serves $SUITE $served, not the pinned $RELEASE: use a snapshot \
(MIRROR=http://snapshot.debian.org/archive/debian/<instant while $RELEASE was current>) or move the pin \
(RELEASE here, the Dockerfile's DEBIAN_RELEASE and package versions; docker/README.md)"
echo "make-base.sh: $SUITE $served ($date) from $MIRROR -> $TAG"
[[ $(id -u) == 0 ]] || die "debootstrap needs root: run as root (or sudo) — nothing was changed"
command -v debootstrap >/dev/null || die "debootstrap not installed: apt-get install -y debootstrap"
"$DOCKER" info >/dev/null 2>&1 || die "no Docker engine answers ($DOCKER info failed): start dockerd"

WORK=${WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/pgolf-base.XXXXXX")}
trap 'rm -rf "$WORK"' EXIT
root=$WORK/rootfs
start=$SECONDS
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

# What the image needs of the root filesystem: the pinned suite's main archive only (the
# Dockerfile writes its own sources again), no package cache, no machine identity.
echo "deb $MIRROR $SUITE main" > "$root/etc/apt/sources.list"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/*
: > "$root/etc/machine-id"
# shellcheck disable=SC2016  # dpkg-query's own ${Field} format, not shell expansions
chroot "$root" dpkg-query -W -f '${Package}=${Version}\n' | sort > "$root/etc/pgolf-base.manifest"
printf 'suite=%s release=%s date=%s mirror=%s\n' "$SUITE" "$served" "$date" "$MIRROR" \
    > "$root/etc/pgolf-base.release"

# Sorted names, fixed owner and times: the same root filesystem gives the same tar stream.
epoch=$(date -d "$date" +%s)
tar -C "$root" --sort=name --numeric-owner --mtime="@$epoch" --clamp-mtime -c . \
    | "$DOCKER" import \
        --change 'CMD ["bash"]' \
        --change "LABEL org.opencontainers.image.base.name=debootstrap:$SUITE-$served" \
        - "$TAG" >/dev/null
size=$("$DOCKER" image inspect -f '{{.Size}}' "$TAG")
echo "make-base.sh: $TAG: $(wc -l < "$root/etc/pgolf-base.manifest") packages, $((size / 1000000)) MB, $((SECONDS - start)) s"
