"""Write docker/requirements.lock: every wheel the container installs, pinned by version and sha256.

Versions come only from the repo's constraints.txt (the single source of versions) plus
docker/gpu-pins.txt (what the CPU venv never sees: torch's CUDA runtime wheels, triton, and the
tools the FlashAttention 3 build stage needs). The dependency closure is computed from each
wheel's own metadata for the container's target (CPython 3.12 of Ubuntu 24.04, manylinux
x86_64, glibc <= 2.39), so a dependency without a pin is an error here, not an unhashed
download during `docker build`.

Files and hashes come from the index's PEP 691 JSON API (/simple/NAME/), which every PyPI
mirror serves; wheel metadata from the PEP 658 `.metadata` file, or else read out of the wheel
with HTTP range requests (a few KiB, not the 500 MB torch wheel).

    python docker/lock.py            # rewrite docker/requirements.lock
    python docker/lock.py --check    # exit 1 if the lock is not what the pins produce
"""

from __future__ import annotations

import argparse
import email.parser
import io
import json
import sys
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
GPU_PINS = ROOT / "docker" / "gpu-pins.txt"
LOCK = ROOT / "docker" / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
DEFAULT_INDEX = "https://pypi.org"

# Installed besides the project's own dependencies: nox (the sessions), and what building the
# project (--no-build-isolation) and the FlashAttention 3 wheel (hopper/setup.py) import.
EXTRA_ROOTS = ("nox", "setuptools", "wheel", "ninja", "packaging")

# Ubuntu 24.04's python3 and glibc (the base image); the Dockerfile installs python3.12.
TARGET_PYTHON = "3.12.3"
TARGET_GLIBC_MINOR = 39


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


def all_pins(constraints: Path = CONSTRAINTS, gpu_pins: Path = GPU_PINS) -> dict[str, Pin]:
    """constraints.txt plus gpu-pins.txt; a package in both is an error (one source per version)."""
    base = read_pins(constraints)
    extra = read_pins(gpu_pins)
    both = sorted(set(base) & set(extra))
    if both:
        raise LockError(f"{gpu_pins}: {', '.join(both)} already pinned in {constraints.name}; "
                        f"remove from {gpu_pins.name}")
    return {**base, **extra}


def project_roots(pyproject: Path = PYPROJECT) -> list[Requirement]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [Requirement(d) for d in deps] + [Requirement(n) for n in EXTRA_ROOTS]


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


def resolve(roots: list[Requirement], pins: dict[str, Pin], index: Index,
            python: str = TARGET_PYTHON, glibc_minor: int = TARGET_GLIBC_MINOR,
            log=print) -> dict[str, Locked]:
    """The closure of `roots` under the target's markers, each package at its pin."""
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
        pin = pins.get(name)
        if pin is None:
            raise LockError(f"{req.name} (required by {parent}: {req}) has no pin in "
                            f"{CONSTRAINTS.name} or docker/{GPU_PINS.name}")
        if req.specifier and not req.specifier.contains(pin.version, prereleases=True):
            raise LockError(f"{pin.source}: {name}=={pin.version} does not satisfy {parent}'s "
                            f"requirement {req}")
        new_extras = {canonicalize_name(e) for e in req.extras}
        if name not in locked:
            wheels = pick_wheels(index.files(name), name, pin.version, tags, python)
            if not wheels:
                raise LockError(f"{name}=={pin.version} ({pin.source}): no wheel for CPython {python} "
                                f"manylinux x86_64 on the index")
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
# Generated by docker/lock.py from constraints.txt + docker/gpu-pins.txt. Do not edit by hand:
# change the pins, then run `python docker/lock.py`.
# Target: CPython {python} (Ubuntu 24.04), manylinux x86_64, glibc <= 2.{glibc}.
# Install with: pip install --require-hashes --only-binary=:all: --no-deps -r requirements.lock
"""


def render(locked: dict[str, Locked], python: str = TARGET_PYTHON,
           glibc_minor: int = TARGET_GLIBC_MINOR) -> str:
    out = [HEADER.format(python=python, glibc=glibc_minor)]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the existing lock, write nothing")
    ap.add_argument("--index", default=DEFAULT_INDEX, help="PEP 691 index base URL (default %(default)s)")
    ap.add_argument("--out", type=Path, default=LOCK)
    args = ap.parse_args(argv)
    try:
        pins = all_pins()
        print(f"resolving for CPython {TARGET_PYTHON} manylinux x86_64 from {args.index}", file=sys.stderr)
        locked = resolve(project_roots(), pins, Index(args.index), log=lambda m: print(m, file=sys.stderr))
    except LockError as e:
        print(f"lock.py: {e}", file=sys.stderr)
        return 1
    text = render(locked)
    unused = sorted(set(read_pins(GPU_PINS)) - set(locked))
    if unused:
        print(f"lock.py: {GPU_PINS.name}: pins not needed by the closure: {', '.join(unused)}",
              file=sys.stderr)
        return 1
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"lock.py: {args.out} is out of date; run python docker/lock.py", file=sys.stderr)
            return 1
        print(f"{args.out}: up to date ({len(locked)} packages)", file=sys.stderr)
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(locked)} packages)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
