"""Write docker/requirements-{cuda,cpu}.lock: every wheel an image variant installs, by version and sha256.

Versions come only from the repo's constraints.txt (the single source of versions) plus
docker/image-pins.txt (what the CPU venv never sees: torch's CUDA runtime wheels, triton,
FlashAttention 4 and its CuTe DSL, setuptools). The dependency closure is computed from each
wheel's own metadata for the image's target (Debian 12's CPython 3.11, manylinux x86_64,
glibc <= 2.36), so a dependency without a pin is an error here, not an unhashed download
during `docker build`.

Variants: `cuda` (the full image: torch's CUDA 13.0 build from PyPI, FlashAttention 4) and `cpu`
(CI's image: torch's CPU build, which PyPI does not carry: it is read from a local wheel, found
in --find-links folders, default $PIP_FIND_LINKS or /opt/wheels; elsewhere fetch it with
`pip download --no-deps --index-url https://download.pytorch.org/whl/cpu torch==VERSION+cpu`).

Files and hashes come from the index's PEP 691 JSON API (/simple/NAME/), which every PyPI
mirror serves; wheel metadata from the PEP 658 `.metadata` file, or else read out of the wheel
with HTTP range requests (a few KiB, not the 500 MB torch wheel).

    python docker/lock.py                    # rewrite both locks
    python docker/lock.py --variant cpu      # one of them
    python docker/lock.py --check            # exit 1 if a lock is not what the pins produce
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import io
import json
import os
import sys
import textwrap
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
IMAGE_PINS = ROOT / "docker" / "image-pins.txt"
PYPROJECT = ROOT / "pyproject.toml"
DEFAULT_INDEX = "https://pypi.org"

# Installed besides the project's own dependencies: what building the project
# (--no-build-isolation) needs, and packaging (imported by torch-c-dlpack-ext without declaring it).
EXTRA_ROOTS = ("setuptools", "packaging")

# Debian 12's python3 (3.11.2) and glibc (2.36): the image's base (docker/make-base.sh).
TARGET_PYTHON = "3.11.2"
TARGET_GLIBC_MINOR = 36


@dataclass(frozen=True)
class Variant:
    name: str
    lock: Path
    roots: tuple[str, ...]  # besides the project's dependencies and EXTRA_ROOTS
    local_labels: dict[str, str]  # package -> PEP 440 local label of a build PyPI lacks (torch: "cpu")
    exclude: dict[str, str]  # package -> why a requirement of it is deliberately not installed


VARIANTS = {
    "cuda": Variant(
        "cuda", ROOT / "docker" / "requirements-cuda.lock",
        # FA4's [cu13] extra: the CuTe DSL's CUDA 13 libraries, matching torch's CUDA 13.0
        roots=("flash-attn-4[cu13]",), local_labels={},
        exclude={"nvidia-cutlass-dsl-libs-cu12":
                 "the CuTe DSL's CUDA 12 libraries; nvidia-cutlass-dsl requires them unconditionally, but "
                 "torch here is CUDA 13 and -libs-cu13 (same files, other build) is installed instead; the "
                 "Dockerfile's pip check allows exactly this one missing requirement"}),
    "cpu": Variant("cpu", ROOT / "docker" / "requirements-cpu.lock", roots=(), local_labels={"torch": "cpu"},
                   exclude={}),
}
LOCK = VARIANTS["cuda"].lock


class LockError(RuntimeError):
    """A pin, an index answer or a dependency that makes a complete lock impossible."""


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    source: str  # file it came from


@dataclass
class Locked:
    name: str
    version: str
    hashes: list[str]
    via: set[str] = field(default_factory=set)
    extras: set[str] = field(default_factory=set)


# --- pins --------------------------------------------------------------------------------------

def read_pins(path: Path) -> dict[str, Pin]:
    """`name==version` lines (comments and blank lines allowed); anything else is an error."""
    pins: dict[str, Pin] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except Exception:
            raise LockError(f"{path}:{n}: not a requirement: {raw!r}") from None
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version or req.marker:
            raise LockError(f"{path}:{n}: expected an exact pin name==version, got {raw!r}")
        name = canonicalize_name(req.name)
        if name in pins:
            raise LockError(f"{path}:{n}: {req.name} pinned twice")
        pins[name] = Pin(name, specs[0].version, path.name)
    return pins


def all_pins(constraints: Path = CONSTRAINTS, image_pins: Path = IMAGE_PINS) -> dict[str, Pin]:
    """constraints.txt plus image-pins.txt; a package in both is an error (one source per version)."""
    base = read_pins(constraints)
    extra = read_pins(image_pins)
    both = sorted(set(base) & set(extra))
    if both:
        raise LockError(f"{image_pins}: {', '.join(both)} already pinned in {constraints.name}; "
                        f"remove from {image_pins.name}")
    return {**base, **extra}


def project_roots(pyproject: Path = PYPROJECT, variant: Variant | None = None) -> list[Requirement]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    extra = variant.roots if variant else ()
    return [Requirement(d) for d in deps] + [Requirement(n) for n in (*EXTRA_ROOTS, *extra)]


def variant_pins(pins: dict[str, Pin], variant: Variant) -> dict[str, Pin]:
    """The pins with the variant's local labels applied (torch==2.13.0 -> torch==2.13.0+cpu)."""
    out = dict(pins)
    for name, label in variant.local_labels.items():
        pin = pins.get(name)
        if pin is None:
            raise LockError(f"{name}: no pin in {CONSTRAINTS.name} to apply +{label} to")
        out[name] = Pin(name, f"{Version(pin.version).public}+{label}", pin.source)
    return out


# --- target ------------------------------------------------------------------------------------

def target_tags(python: str = TARGET_PYTHON, glibc_minor: int = TARGET_GLIBC_MINOR) -> list[Tag]:
    """Wheel tags the container's interpreter accepts, best first."""
    aliases = {17: "manylinux2014_x86_64", 12: "manylinux2010_x86_64", 5: "manylinux1_x86_64"}
    plats: list[str] = []
    for minor in range(glibc_minor, 4, -1):
        plats.append(f"manylinux_2_{minor}_x86_64")
        if minor in aliases:
            plats.append(aliases[minor])
    major, minor = (int(x) for x in python.split(".")[:2])
    return [*cpython_tags((major, minor), platforms=plats),
            *compatible_tags((major, minor), f"cp{major}{minor}", plats)]


def marker_env(python: str = TARGET_PYTHON) -> dict[str, str]:
    short = ".".join(python.split(".")[:2])
    return {"implementation_name": "cpython", "implementation_version": python, "os_name": "posix",
            "platform_machine": "x86_64", "platform_python_implementation": "CPython",
            "platform_release": "", "platform_system": "Linux", "platform_version": "",
            "python_full_version": python, "python_version": short, "sys_platform": "linux",
            "extra": ""}


# --- index -------------------------------------------------------------------------------------

def _get(url: str, headers: dict[str, str] | None = None, tries: int = 3) -> bytes:
    for attempt in range(tries):
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "pgolf-lock", **(headers or {})})
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.read()
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            if attempt == tries - 1:
                raise LockError(f"{url}: {e}") from None
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


class _RangeFile(io.RawIOBase):
    """A remote file read with HTTP Range requests, seekable, for zipfile."""

    def __init__(self, url: str, size: int):
        self.url, self.size, self.pos = url, size, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self.pos)
        if n <= 0:
            return 0
        data = _get(self.url, {"Range": f"bytes={self.pos}-{self.pos + n - 1}"})
        if len(data) != n:  # a server that ignored Range sent the whole file
            data = data[self.pos:self.pos + n]
        buf[:n] = data
        self.pos += n
        return n


class Index:
    """Files and metadata from a PEP 691 index (pypi.org or a mirror)."""

    def __init__(self, base: str = DEFAULT_INDEX):
        self.base = base.rstrip("/")

    def files(self, name: str) -> list[dict]:
        url = f"{self.base}/simple/{name}/"
        try:
            raw = _get(url, {"Accept": "application/vnd.pypi.simple.v1+json"})
        except urllib.error.HTTPError as e:
            raise LockError(f"{url}: HTTP {e.code}") from None
        files = json.loads(raw)["files"]
        for f in files:  # mirrors may answer with relative URLs
            f["url"] = urllib.parse.urljoin(url, f["url"])
        return files

    def metadata(self, wheel: dict) -> email.message.Message:
        try:
            text = _get(wheel["url"] + ".metadata")
        except urllib.error.HTTPError:
            text = self._metadata_from_zip(wheel)
        return email.parser.BytesParser().parsebytes(text)

    def _metadata_from_zip(self, wheel: dict) -> bytes:
        size = wheel.get("size")
        if not size:
            raise LockError(f"{wheel['url']}: no size in the index and no .metadata file")
        with zipfile.ZipFile(io.BufferedReader(_RangeFile(wheel["url"], size), 1 << 16)) as z:
            names = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            if len(names) != 1:
                raise LockError(f"{wheel['filename']}: expected one *.dist-info/METADATA, found {names}")
            return z.read(names[0])


class LocalWheels:
    """Wheels in local folders (find-links), for builds no index carries (torch's +cpu build)."""

    def __init__(self, folders: list[Path]):
        self.folders = [Path(f) for f in folders]

    def files(self, name: str) -> list[dict]:
        out = []
        for folder in self.folders:
            for path in sorted(folder.glob("*.whl")) if folder.is_dir() else ():
                try:
                    wname = parse_wheel_filename(path.name)[0]
                except Exception:
                    continue
                if wname == canonicalize_name(name):
                    out.append({"filename": path.name, "url": path.resolve().as_uri(),
                                "size": path.stat().st_size, "hashes": {"sha256": sha256_file(path)},
                                "local": str(path)})
        return out

    def metadata(self, wheel: dict) -> email.message.Message:
        with zipfile.ZipFile(wheel["local"]) as z:
            names = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            if len(names) != 1:
                raise LockError(f"{wheel['local']}: expected one *.dist-info/METADATA, found {names}")
            return email.parser.BytesParser().parsebytes(z.read(names[0]))


class Sources:
    """PyPI for every package, except those read from local wheels."""

    def __init__(self, index: Index, local: LocalWheels | None = None, local_names: tuple[str, ...] = ()):
        self.index, self.local, self.local_names = index, local, set(local_names)

    def files(self, name: str) -> list[dict]:
        if self.local is not None and name in self.local_names:
            return self.local.files(name)
        return self.index.files(name)

    def metadata(self, wheel: dict) -> email.message.Message:
        return self.local.metadata(wheel) if "local" in wheel else self.index.metadata(wheel)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_find_links() -> list[Path]:
    env = os.environ.get("PIP_FIND_LINKS", "")
    return [Path(p) for p in env.split()] if env.strip() else [Path("/opt/wheels")]


# --- resolution --------------------------------------------------------------------------------

def pick_wheels(files: list[dict], name: str, version: str, tags: list[Tag],
                python: str = TARGET_PYTHON) -> list[dict]:
    """Every wheel of name==version the target can install, best tag first."""
    rank = {t: i for i, t in enumerate(tags)}
    want = Version(version)
    picked = []
    for f in files:
        fn = f["filename"]
        if not fn.endswith(".whl") or f.get("yanked"):
            continue
        try:
            wname, wver, _, wtags = parse_wheel_filename(fn)
        except Exception:
            continue
        if wname != name or wver != want:
            continue
        req_py = f.get("requires-python")
        if req_py and not SpecifierSet(req_py).contains(python, prereleases=True):
            continue
        best = min((rank[t] for t in wtags if t in rank), default=None)
        if best is not None and f.get("hashes", {}).get("sha256"):
            picked.append((best, fn, f))
    return [f for _, _, f in sorted(picked, key=lambda x: (x[0], x[1]))]


def resolve(roots: list[Requirement], pins: dict[str, Pin], index: Index | Sources,
            python: str = TARGET_PYTHON, glibc_minor: int = TARGET_GLIBC_MINOR,
            log=print, exclude: dict[str, str] | None = None,
            excluded: dict[str, set[str]] | None = None) -> dict[str, Locked]:
    """The closure of `roots` under the target's markers, each package at its pin.

    A requirement on a package in `exclude` is not followed; who required it is collected in
    `excluded` (package -> requirers) for the lock's comments.
    """
    tags = target_tags(python, glibc_minor)
    env = marker_env(python)
    locked: dict[str, Locked] = {}
    meta: dict[str, email.message.Message] = {}
    todo: list[tuple[Requirement, str]] = [(r, "(root)") for r in roots]
    while todo:
        req, parent = todo.pop(0)
        if req.marker and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if exclude and name in exclude:
            if excluded is not None:
                excluded.setdefault(name, set()).add(parent)
            continue
        pin = pins.get(name)
        if pin is None:
            raise LockError(f"{req.name} (required by {parent}: {req}) has no pin in "
                            f"{CONSTRAINTS.name} or docker/{IMAGE_PINS.name}")
        if req.specifier and not req.specifier.contains(pin.version, prereleases=True):
            raise LockError(f"{pin.source}: {name}=={pin.version} does not satisfy {parent}'s "
                            f"requirement {req}")
        new_extras = {canonicalize_name(e) for e in req.extras}
        if name not in locked:
            wheels = pick_wheels(index.files(name), name, pin.version, tags, python)
            if not wheels:
                local = isinstance(index, Sources) and name in index.local_names
                where = "in the local wheel folders" if local else "on the index"
                raise LockError(f"{name}=={pin.version} ({pin.source}): no wheel for CPython {python} "
                                f"manylinux x86_64 {where}")
            log(f"  {name}=={pin.version}: {len(wheels)} wheel(s), metadata from {wheels[0]['filename']}")
            locked[name] = Locked(name, pin.version, sorted({w["hashes"]["sha256"] for w in wheels}))
            meta[name] = index.metadata(wheels[0])
            extras_to_expand = {""} | new_extras
        else:
            extras_to_expand = new_extras - locked[name].extras
        entry = locked[name]
        entry.via.add(parent)
        entry.extras |= new_extras
        for dep in meta[name].get_all("Requires-Dist") or []:
            dreq = Requirement(dep)
            if dreq.marker is None:
                if "" in extras_to_expand:
                    todo.append((dreq, name))
                continue
            dmarker = dreq.marker
            dreq.marker = None
            if any(Marker(str(dmarker)).evaluate({**env, "extra": e}) for e in extras_to_expand):
                todo.append((dreq, name))
    return locked


# --- the lock file -----------------------------------------------------------------------------

HEADER = """\
# Generated by docker/lock.py from constraints.txt + docker/image-pins.txt. Do not edit by hand:
# change the pins, then run `python docker/lock.py`.
# Image variant: {variant}. Target: CPython {python} (Debian 12), manylinux x86_64, glibc <= 2.{glibc}.
# Install with: pip install --require-hashes --only-binary=:all: --no-deps -r THIS_FILE
"""


def render(locked: dict[str, Locked], python: str = TARGET_PYTHON,
           glibc_minor: int = TARGET_GLIBC_MINOR, variant: Variant | None = None,
           excluded: dict[str, set[str]] | None = None) -> str:
    out = [HEADER.format(python=python, glibc=glibc_minor, variant=variant.name if variant else "-")]
    for name in sorted(excluded or {}):
        why = variant.exclude[name] if variant else "excluded"
        text = f"not installed: {name} (required by {', '.join(sorted(excluded[name]))}): {why}"
        out.append("".join(f"# {line}\n" for line in textwrap.wrap(text, 96)))
    for name, label in (variant.local_labels.items() if variant else ()):
        if name in locked:
            out.append(f"# {name}=={locked[name].version}: not on PyPI; the +{label} build from "
                       f"https://download.pytorch.org/whl/{label} (pip download --no-deps --index-url ...)\n")
    for name in sorted(locked):
        e = locked[name]
        lines = [f"{name}=={e.version}"] + [f"    --hash=sha256:{h}" for h in e.hashes]
        out.append(" \\\n".join(lines) + "\n")
        out.append(f"    # via {', '.join(sorted(e.via))}\n")
    return "".join(out)


def parse_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, [sha256...])} from a lock in pip's hash format."""
    joined = text.replace("\\\n", " ")
    entries: dict[str, tuple[str, list[str]]] = {}
    for n, raw in enumerate(joined.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        head, *opts = line.split()
        name, sep, version = head.partition("==")
        hashes = [o.removeprefix("--hash=sha256:") for o in opts if o.startswith("--hash=sha256:")]
        if not sep or len(hashes) != len(opts) or not hashes:
            raise LockError(f"requirements.lock: entry {n} is not 'name==version --hash=sha256:...': {raw!r}")
        entries[canonicalize_name(name)] = (version, hashes)
    return entries


def lock_variant(variant: Variant, pins: dict[str, Pin], index_url: str, find_links: list[Path],
                 log=print) -> str:
    """The lock file text of one image variant."""
    sources = Sources(Index(index_url), LocalWheels(find_links), tuple(variant.local_labels))
    excluded: dict[str, set[str]] = {}
    locked = resolve(project_roots(variant=variant), variant_pins(pins, variant), sources, log=log,
                     exclude=variant.exclude, excluded=excluded)
    return render(locked, variant=variant, excluded=excluded)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the existing locks, write nothing")
    ap.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    ap.add_argument("--index", default=DEFAULT_INDEX, help="PEP 691 index base URL (default %(default)s)")
    ap.add_argument("--find-links", type=Path, action="append",
                    help="folder with local wheels (torch's +cpu build); "
                         "default $PIP_FIND_LINKS or /opt/wheels")
    args = ap.parse_args(argv)
    names = list(VARIANTS) if args.variant == "all" else [args.variant]
    find_links = args.find_links or default_find_links()
    stale = []
    used: set[str] = set()
    try:
        pins = all_pins()
        for name in names:
            variant = VARIANTS[name]
            print(f"[{name}] resolving for CPython {TARGET_PYTHON} manylinux x86_64 from {args.index}",
                  file=sys.stderr)
            text = lock_variant(variant, pins, args.index, find_links,
                                log=lambda m: print(m, file=sys.stderr))
            used |= set(parse_lock(text))
            if args.check:
                current = variant.lock.read_text() if variant.lock.exists() else ""
                if current != text:
                    stale.append(variant.lock)
                continue
            variant.lock.write_text(text)
            print(f"wrote {variant.lock} ({len(parse_lock(text))} packages)", file=sys.stderr)
    except LockError as e:
        print(f"lock.py: {e}", file=sys.stderr)
        return 1
    if args.variant == "all":
        unused = sorted(set(read_pins(IMAGE_PINS)) - used)
        if unused:
            print(f"lock.py: {IMAGE_PINS.name}: pins no variant needs: {', '.join(unused)}", file=sys.stderr)
            return 1
    if stale:
        print(f"lock.py: out of date: {', '.join(map(str, stale))}; run python docker/lock.py",
              file=sys.stderr)
        return 1
    if args.check:
        print(f"{', '.join(VARIANTS[n].lock.name for n in names)}: up to date", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
