#!/usr/bin/env bash
# Set-up steps on a lent GPU machine (bare, no network), sourced by the bench/gpu_call*.sh scripts.
#
# What travels with a call (git-ignored folders named in `carry`):
#   .whl/base  wheels the machine's image lacks: brotli, zstandard, jsonschema (+ its deps)
#   .whl/fa4a  first half of the FlashAttention-4 CuTe libs (nvidia-cutlass-dsl-libs-cu13 as tar.xz)
#   .whl/fa4b  second half + flash-attn-4 and its small wheels
#   .gpu       bench text (linux-doc sources, xz), Debian lrzip + libs (.deb), tokenizers, reference scripts
# The cu13 libs wheel (92 MB) is larger than one call may carry: it travels repacked as tar.xz
# (64 MB) in two parts, the first stashed in /tmp by one call and joined by the next on the same
# warm machine.
set -u

setup_base() {
  python3 -m pip install -q --no-index --no-deps --no-cache-dir .whl/base/*.whl || return 1
  # lrzip for the per-group artifact codec: unpacked beside /, never over it
  mkdir -p /tmp/lrz
  for f in .gpu/deb/*.deb; do dpkg -x "$f" /tmp/lrz; done
  export PATH="/tmp/lrz/usr/bin:$PATH"
  export LD_LIBRARY_PATH="/tmp/lrz/usr/lib/x86_64-linux-gnu:/tmp/lrz/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
  lrzip -V 2>&1 | head -1
  python3 -c "import brotli, zstandard, jsonschema; print('base wheels ok')"
}

stash_fa4a() {
  mkdir -p /tmp/stash && cp .whl/fa4a/* /tmp/stash/ && ls -la /tmp/stash
}

install_fa4() {
  [ -f /tmp/stash/cu13x.part.aa ] || { echo "install_fa4: first half not stashed (cold machine?)"; return 1; }
  cat /tmp/stash/cu13x.part.aa .whl/fa4b/cu13x.part.ab > /tmp/cu13.tar.xz
  (cd /tmp && sha256sum -c "$OLDPWD/.whl/fa4b/cu13.tar.xz.sha256") || return 1
  rm -rf /tmp/cu13x && mkdir -p /tmp/cu13x && xz -dc /tmp/cu13.tar.xz | tar -C /tmp/cu13x -xf - || return 1
  local whl=/tmp/wheels/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
  mkdir -p /tmp/wheels && rm -f "$whl"
  (cd /tmp/cu13x && python3 -c "
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_STORED) as z:
    for d, _, fs in os.walk('.'):
        for f in fs:
            p = os.path.join(d, f)
            z.write(p, os.path.relpath(p, '.'))
" "$whl") || return 1
  # into the image's own environment (not --target: the CuTe package is put on sys.path by a .pth)
  python3 -m pip install -q --no-index --no-deps --no-cache-dir .whl/fa4b/*.whl "$whl" || return 1
  python3 -c "import flash_attn.cute as fc; print('flash_attn.cute', getattr(fc, '__version__', '?'))"
}

build_bench_data() {  # $1 = output folder (tokenized linux-doc text, sp8192; CaseOps when supported)
  local out=$1
  mkdir -p /tmp/ld/usr/share/doc/linux-doc-6.1/html "$out/tokenizers"
  tar -C /tmp/ld/usr/share/doc/linux-doc-6.1/html -xJf .gpu/linux-doc-sources.tar.xz
  mkdir -p /tmp/bshared/tokenizers && cp .gpu/tokenizers/* /tmp/bshared/tokenizers/
  python3 bench/text_data.py --source linux-doc --linux-doc /tmp/ld --out "$out" --shared /tmp/bshared \
    --vocab 8192 "${@:2}"
}
