"""Build the image from nothing but the Debian archive and the package index (`nox -s image`).

1. engine: `docker info` must answer; where it does not, as root on Debian, install docker.io
   and start dockerd (log: $TMPDIR/pgolf-dockerd.log); elsewhere one line says how;
2. base: the Dockerfile's pinned base if present or pullable, else the local one that
   docker/make-base.sh makes with debootstrap (pgolf-base:SUITE-RELEASE);
3. wheels: docker/wheelhouse/VARIANT holds exactly the wheels of docker/requirements-VARIANT.lock,
   each checked against its sha256 (pip download --require-hashes fetches what is missing, on
   the host, where the index's certificates are; nothing is fetched during the build);
4. build: the Dockerfile on a context of the repository's files plus that wheelhouse;
5. report: image size, build time, and torch / CUDA / FlashAttention 4 versions read from
   inside the image; also written to docker/wheelhouse/VARIANT.build.json.

    python docker/build.py [--variant cuda|cpu] [--tag T] [--base IMAGE] [--no-cache]
    python docker/build.py --wheelhouse-only [--variant cuda|cpu]   # for a docker build by hand
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
WHEELHOUSE = DOCKER_DIR / "wheelhouse"

sys.path.insert(0, str(DOCKER_DIR))
import lock  # noqa: E402  (docker/lock.py, a script beside this one)

DEFAULT_TAGS = {"cuda": ["pgolf:cuda", "pgolf:latest"], "cpu": ["pgolf:cpu"]}
# what the report reads from inside the image (no GPU needed; FA4 is not imported, only looked up)
VERSIONS_PY = """
import json, importlib.metadata as md, platform, torch
def v(n):
    try:
        return md.version(n)
    except md.PackageNotFoundError:
        return None
fa4_import = None
if v("flash-attn-4"):  # FA4's kernels compile at first call on a GPU; the import needs none
    try:
        import flash_attn.cute  # noqa: F401
        fa4_import = "ok"
    except Exception as e:
        fa4_import = f"{type(e).__name__}: {e}"
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                  "torch_cuda": torch.version.cuda, "triton": v("triton"), "flash_attn_4": v("flash-attn-4"),
                  "nvidia_cutlass_dsl": v("nvidia-cutlass-dsl"), "cudnn": v("nvidia-cudnn-cu13"),
                  "flash_attn_cute_import": fa4_import}))
"""


class BuildError(RuntimeError):
    """One line for the user: what failed and what to do."""


def log(msg: str) -> None:
    print(f"== image: {msg}", flush=True)


def dockerfile_arg(name: str, dockerfile: Path = DOCKERFILE) -> str:
    """The default of `ARG NAME=value` in the Dockerfile (exactly one)."""
    found = re.findall(rf"^ARG {name}=(\S+)\s*$", dockerfile.read_text(), flags=re.M)
    if len(found) != 1:
        raise BuildError(f"{dockerfile}: expected one 'ARG {name}=...' line, found {len(found)}")
    return found[0]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, text=True, **kw)


# --- 1. the engine ------------------------------------------------------------------------------

def engine_answers(docker: str) -> bool:
    try:
        return run([docker, "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def apt_install(packages: list[str], why: str) -> None:
    """apt-get install, as root on Debian/Ubuntu only; elsewhere one line says what to install."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BuildError(f"{why}: install {' '.join(packages)} (Debian/Ubuntu, as root: apt-get install -y "
                         f"{' '.join(packages)}), then run this again")
    log(f"{why}: apt-get install -y {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        proc = run(cmd, env=env, capture_output=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:]
            raise BuildError(f"{' '.join(cmd)} failed: {' '.join(tail)}")


def ensure_engine(docker: str = "docker", wait_s: float = 60.0) -> None:
    """A Docker engine that answers: started (and installed) here when it is missing."""
    if engine_answers(docker):
        return
    if shutil.which("dockerd") is None:
        apt_install(["docker.io"], "no Docker engine (dockerd) installed")
    if os.geteuid() != 0:
        raise BuildError(f"the Docker engine does not answer ({docker} info failed): start it (sudo dockerd "
                         f"&, or sudo systemctl start docker), or add yourself to the docker group")
    logfile = Path(os.environ.get("TMPDIR", "/tmp")) / "pgolf-dockerd.log"
    log(f"starting dockerd (log: {logfile})")
    with open(logfile, "ab") as f:
        subprocess.Popen(["dockerd"], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if engine_answers(docker):
            return
        time.sleep(1)
    raise BuildError(f"dockerd did not answer within {wait_s:.0f} s; see {logfile}")


def buildkit_env(docker: str) -> dict[str, str]:
    """BuildKit where the client has buildx; else the engine's classic builder, asked for by name
    (a new client without buildx refuses BuildKit, an old one defaults to classic anyway)."""
    has_buildx = run([docker, "buildx", "version"], capture_output=True).returncode == 0
    return {} if has_buildx else {"DOCKER_BUILDKIT": "0"}


# --- 2. the base --------------------------------------------------------------------------------

def local_base_tag() -> str:
    return f"pgolf-base:{dockerfile_arg('DEBIAN_SUITE')}-{dockerfile_arg('DEBIAN_RELEASE')}"


def image_exists(docker: str, ref: str) -> bool:
    return run([docker, "image", "inspect", ref], capture_output=True).returncode == 0


def choose_base(docker: str, requested: str | None, pull: bool = True, pull_timeout: float = 300) -> str:
    """The base to build on: --base, else the Dockerfile's if present or pullable, else the local one."""
    if requested:
        if not image_exists(docker, requested) and (not pull or not _pull(docker, requested, pull_timeout)):
            raise BuildError(f"--base {requested}: not present and not pullable")
        return requested
    pinned = dockerfile_arg("BASE_IMAGE")
    if image_exists(docker, pinned):
        return pinned
    if pull and _pull(docker, pinned, pull_timeout):
        return pinned
    tag = local_base_tag()
    log(f"{pinned} cannot be pulled here: the local base {tag} (docker/make-base.sh, debootstrap)")
    if not image_exists(docker, tag):
        if shutil.which("debootstrap") is None:
            apt_install(["debootstrap"], "the local base needs debootstrap")
        env = {**os.environ, "SUITE": dockerfile_arg("DEBIAN_SUITE"),
               "RELEASE": dockerfile_arg("DEBIAN_RELEASE"), "TAG": tag, "DOCKER": docker}
        proc = run(["bash", str(DOCKER_DIR / "make-base.sh")], env=env)
        if proc.returncode != 0:
            raise BuildError(f"docker/make-base.sh failed (exit {proc.returncode}); its last line says why")
    return tag


def _pull(docker: str, ref: str, timeout: float) -> bool:
    log(f"pulling {ref}")
    try:
        proc = run([docker, "pull", ref], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"pull of {ref}: no answer within {timeout:.0f} s")
        return False
    if proc.returncode != 0:
        log(f"pull of {ref} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return proc.returncode == 0


# --- 3. the wheelhouse --------------------------------------------------------------------------

def lock_path(variant: str) -> Path:
    return lock.VARIANTS[variant].lock


def wheelhouse_state(folder: Path, entries: dict[str, tuple[str, list[str]]]
                     ) -> tuple[list[str], list[Path]]:
    """(lock entries with no wheel of a locked hash in `folder`, files in `folder` of no locked hash)."""
    wanted = {h: name for name, (_, hashes) in entries.items() for h in hashes}
    have: set[str] = set()
    extra: list[Path] = []
    for path in sorted(folder.glob("*")) if folder.is_dir() else ():
        digest = lock.sha256_file(path) if path.is_file() else None
        if digest in wanted:
            have.add(wanted[digest])
        else:
            extra.append(path)
    missing = sorted(name for name in entries if name not in have)
    return missing, extra


def pip_download_command(lockfile: Path, dest: Path, find_links: list[Path]) -> list[str]:
    """pip download of the lock's wheels for the image's target (not the host's): hash-checked."""
    major, minor = lock.TARGET_PYTHON.split(".")[:2]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
           "--only-binary=:all:", "--python-version", f"{major}.{minor}", "--implementation", "cp",
           "--abi", f"cp{major}{minor}", "-d", str(dest), "-r", str(lockfile)]
    for m in range(lock.TARGET_GLIBC_MINOR, 16, -1):  # every manylinux level the image's glibc runs
        cmd += ["--platform", f"manylinux_2_{m}_x86_64"]
    cmd += ["--platform", "manylinux2014_x86_64"]
    for folder in find_links:
        if folder.is_dir():
            cmd += ["--find-links", str(folder)]
    return cmd


def ensure_wheelhouse(variant: str, dest: Path | None = None, find_links: list[Path] | None = None) -> Path:
    dest = dest or WHEELHOUSE / variant
    lockfile = lock_path(variant)
    entries = lock.parse_lock(lockfile.read_text())
    dest.mkdir(parents=True, exist_ok=True)
    missing, extra = wheelhouse_state(dest, entries)
    for path in extra:  # wheels of older pins (or anything else): out, so the build sees only the lock
        path.unlink() if path.is_file() else shutil.rmtree(path)
    if missing:
        log(f"wheelhouse {dest}: downloading {len(missing)} of {len(entries)} wheels "
            f"(pip download --require-hashes)")
        proc = run(pip_download_command(lockfile, dest, find_links or lock.default_find_links()))
        if proc.returncode != 0:
            raise BuildError(f"pip download of {lockfile.name} failed (exit {proc.returncode}; "
                             f"pip's error above)")
        missing, extra = wheelhouse_state(dest, entries)
        for path in extra:
            path.unlink()
        if missing:
            raise BuildError(f"{dest}: no wheel with a locked sha256 for {', '.join(missing)}")
    size = sum(p.stat().st_size for p in dest.glob("*.whl"))
    log(f"wheelhouse {dest}: {len(entries)} wheels, {size / 1e9:.2f} GB, every sha256 as locked")
    return dest


# --- 4. the build -------------------------------------------------------------------------------

# Context of the build: the repository's files (git's view: tracked + untracked, not ignored) and
# the variant's wheelhouse; no .venv/.nox/.git, whatever the builder's ignore-file support.
SKIP_DIRS = {".git", ".venv", ".nox", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "runs",
             "data", "build", "out"}


def context_files(root: Path = ROOT) -> list[str]:
    proc = run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
               capture_output=True)
    if proc.returncode == 0:
        names = [n for n in proc.stdout.split("\0") if n and (root / n).is_file()]
    else:  # not a git checkout (an unpacked archive): walk it
        names = []
        for d, dirs, files in os.walk(root):
            dirs[:] = [x for x in dirs if x not in SKIP_DIRS and not x.endswith(".egg-info")
                       and Path(d, x) != WHEELHOUSE]
            names += [str(Path(d, f).relative_to(root)) for f in files]
    return sorted(n for n in names if not n.startswith("docker/wheelhouse/"))


def stage_context(variant: str, root: Path = ROOT) -> Path:
    """The build context as a folder of hard links (copies across file systems): the repository's
    files and the variant's wheelhouse, nothing else. Returns the folder (rebuilt every time)."""
    dest = root / "docker" / "wheelhouse" / f"context-{variant}"
    shutil.rmtree(dest, ignore_errors=True)
    house = root / "docker" / "wheelhouse" / variant
    wheels = sorted(str(p.relative_to(root)) for p in house.glob("*.whl"))
    for name in context_files(root) + wheels:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(root / name, target)
        except OSError:
            shutil.copy2(root / name, target)
    return dest


def build_image(docker: str, variant: str, base: str, tags: list[str], no_cache: bool = False) -> float:
    cmd = [docker, "build", "-f", "docker/Dockerfile", "--build-arg", f"BASE_IMAGE={base}",
           "--build-arg", f"VARIANT={variant}"]
    for tag in tags:
        cmd += ["-t", tag]
    if no_cache:
        cmd.append("--no-cache")
    context = stage_context(variant)
    cmd.append(str(context))
    log(f"docker build ({variant}, base {base}) -> {', '.join(tags)}")
    env = {**os.environ, **buildkit_env(docker)}
    start = time.monotonic()
    rc = subprocess.run(cmd, env=env, cwd=context).returncode
    shutil.rmtree(context, ignore_errors=True)
    if rc != 0:
        raise BuildError(f"docker build failed (exit {rc}); the failing step is above")
    return time.monotonic() - start


# --- 5. the report ------------------------------------------------------------------------------

def image_report(docker: str, tag: str) -> dict:
    size = int(run([docker, "image", "inspect", "-f", "{{.Size}}", tag], capture_output=True,
                   check=True).stdout.strip())
    proc = run([docker, "run", "--rm", "--network", "none", "--entrypoint", "python", tag, "-c", VERSIONS_PY],
               capture_output=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise BuildError(f"{tag}: python in the image failed: {why}")
    return {"size_bytes": size, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="docker/build.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(lock.VARIANTS), default="cuda",
                    help="cuda: the full image (default); cpu: torch's CPU build, for CI")
    ap.add_argument("--tag", action="append",
                    help="image tag(s) (default pgolf:cuda + pgolf:latest, or pgolf:cpu)")
    ap.add_argument("--base",
                    help="build on this image instead (default: the pinned base, else the local one)")
    ap.add_argument("--no-pull", action="store_true", help="do not try to pull the pinned base")
    ap.add_argument("--no-cache", action="store_true", help="docker build --no-cache")
    ap.add_argument("--wheelhouse-only", action="store_true",
                    help="only fill docker/wheelhouse/VARIANT (no engine needed), for a docker build by hand")
    ap.add_argument("--docker", default=os.environ.get("DOCKER", "docker"),
                    help="the Docker client (default docker)")
    args = ap.parse_args(argv)
    tags = args.tag or DEFAULT_TAGS[args.variant]
    try:
        start = time.monotonic()
        if args.wheelhouse_only:
            ensure_wheelhouse(args.variant)
            return 0
        ensure_engine(args.docker)
        base = choose_base(args.docker, args.base, pull=not args.no_pull)
        ensure_wheelhouse(args.variant)
        build_s = build_image(args.docker, args.variant, base, tags, args.no_cache)
        report = {"variant": args.variant, "tags": tags, "base": base, "build_s": round(build_s, 1),
                  "total_s": round(time.monotonic() - start, 1), **image_report(args.docker, tags[0])}
    except BuildError as e:
        print(f"docker/build.py: error: {e}", file=sys.stderr)
        return 1
    (WHEELHOUSE / f"{args.variant}.build.json").write_text(json.dumps(report, indent=2) + "\n")
    fa4 = ""
    if report["flash_attn_4"]:
        fa4 = (f", flash-attn-4 {report['flash_attn_4']} "
               f"(import flash_attn.cute: {report['flash_attn_cute_import']})")
    print(f"image {tags[0]}: {report['size_bytes'] / 1e9:.2f} GB, docker build {report['build_s']:.0f} s "
          f"({report['total_s']:.0f} s with engine, base and wheels); base {base}; "
          f"python {report['python']}, torch {report['torch']} (CUDA {report['torch_cuda'] or 'none'}){fa4}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
