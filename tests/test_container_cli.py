"""The image, run for real: its entrypoint modes as the image's non-root user with --network none.

`demo` end to end (PRESET=tiny on CPU), `verify` on the demo's records folder, `reproduce` from the
artifacts with only the val shards and the tokenizer mounted read-only, and the error paths (a GPU
mode without a GPU, a missing mount, a corrupt artifact): one clear line, non-zero exit, and
nothing written outside the mounts (`docker diff` of each container: at most /tmp).

Needs a Docker engine and the image (PGOLF_TEST_IMAGE, default pgolf:cpu, built by
`nox -s image -- --variant cpu`); skipped without them, failed instead where
PGOLF_REQUIRE_CONTAINER=1 (.ci/run sets it, after building the image). The full CUDA image runs
the same tests with PGOLF_TEST_IMAGE=pgolf:cuda.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

IMAGE = os.environ.get("PGOLF_TEST_IMAGE", "pgolf:cpu")
REQUIRED = os.environ.get("PGOLF_REQUIRE_CONTAINER") == "1"
UID = 10001  # the image's user (docker/Dockerfile)
BUILD_HINT = "python3 -m pip install -q nox && nox -s image -- --variant cpu"


def _unavailable() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return f"no docker client on PATH (then: {BUILD_HINT})"
    try:
        if subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode != 0:
            return f"no Docker engine answers `docker info` ({BUILD_HINT} starts one)"
        if subprocess.run([docker, "image", "inspect", IMAGE], capture_output=True, timeout=30).returncode:
            return f"image {IMAGE} not built ({BUILD_HINT})"
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer within 30 s"
    return None


WHY_NOT = _unavailable()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(WHY_NOT is not None and not REQUIRED, reason=str(WHY_NOT))]


@pytest.fixture(autouse=True)
def _engine_and_image():
    if WHY_NOT is not None:  # only reached when PGOLF_REQUIRE_CONTAINER=1
        pytest.fail(f"PGOLF_REQUIRE_CONTAINER=1 but {WHY_NOT}")


@dataclass
class Ran:
    rc: int
    out: str
    err: str
    changed: list[str]  # `docker diff`: paths the run changed in the container's own file system

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


def _diff(name: str) -> set[str]:
    out = subprocess.run(["docker", "diff", name], capture_output=True, text=True, timeout=60).stdout
    return {ln.split(" ", 1)[1] for ln in out.splitlines() if " " in ln}


def docker_run(*args: str, mounts: tuple[str, ...] = (), env: dict[str, str] | None = None,
               options: tuple[str, ...] = (), network: str = "none", timeout: float = 1500) -> Ran:
    """docker run --network none IMAGE ARGS as the image's user, and what the run itself changed in
    the container's file system: `docker diff` after the run, less the mount points (and their
    parent folders) that docker itself creates when it starts the container."""
    name = f"pgolf-test-{uuid.uuid4().hex[:12]}"
    cmd = ["docker", "create", "--name", name, "--network", network, *options]
    for m in mounts:
        cmd += ["-v", m]
    for k, v in (env or {}).items():
        cmd += ["-e", f"{k}={v}"]
    try:
        subprocess.run([*cmd, IMAGE, *args], capture_output=True, text=True, timeout=120, check=True)
        before = _diff(name)
        proc = subprocess.run(["docker", "start", "--attach", name], capture_output=True, text=True,
                              timeout=timeout)
        points = {str(p) for m in mounts for p in (Path(m.split(":")[1]), *Path(m.split(":")[1]).parents)}
        changed = sorted(_diff(name) - before - points)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
    return Ran(proc.returncode, proc.stdout, proc.stderr, changed)


def outside_tmp(changed: list[str]) -> list[str]:
    return [p for p in changed if p != "/tmp" and not p.startswith("/tmp/")]


def for_the_user(path: Path) -> Path:
    """A host folder the image's user (uid 10001) may write to."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, UID, UID)
    else:
        path.chmod(0o777)
    return path


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@dataclass
class Demo:
    run: Ran
    records: Path  # host folder of the records (the container's /records/demo/records)
    dataset: Path  # host folder of the demo's shards
    tokenizer: Path


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    """`demo` once for the module: /records mounted read-write, everything under /records/demo."""
    work = for_the_user(tmp_path_factory.mktemp("demo") / "mount")
    ran = docker_run("demo", mounts=(f"{work}:/records",))
    root = work / "demo"
    datasets = sorted((root / "data" / "datasets").glob("*"))
    tokenizers = sorted((root / "data" / "tokenizers").glob("*.model"))
    return Demo(ran, root / "records", (datasets or [root])[0], (tokenizers or [root])[0])


def val_mounts(d: Demo) -> tuple[list[str], dict[str, str]]:
    """Only the val shards and the tokenizer, read-only, in the /data layout."""
    ds = f"/data/datasets/{d.dataset.name}"
    mounts = [f"{p}:{ds}/{p.name}:ro" for p in sorted(d.dataset.glob("fineweb_val_*.bin"))]
    mounts.append(f"{d.tokenizer}:/data/tokenizers/{d.tokenizer.name}:ro")
    return mounts, {"DATA_PATH": ds, "TOKENIZER_PATH": f"/data/tokenizers/{d.tokenizer.name}"}


# --- the modes -----------------------------------------------------------------------------------

# Every certificate the image trusts is one of Debian's ca-certificates package (a dependency of
# python3's pip wheel); the host's network CA, needed to reach the index from here, is not.
CA_CHECK = """
import glob, re
pem = lambda text: set(re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S))
bundle = pem(open("/etc/ssl/certs/ca-certificates.crt").read())
debian = set().union(*(pem(open(f).read()) for f in glob.glob("/usr/share/ca-certificates/**/*.crt",
                                                                 recursive=True)))
local = glob.glob("/usr/local/share/ca-certificates/**/*", recursive=True)
print("ca-ok" if bundle and bundle <= debian and not local else f"ca-extra {len(bundle - debian)} {local}")
"""


def test_image_user_and_contents():
    ran = docker_run("-c", f"id -u; command -v lrzip; python - <<'EOF'\n{CA_CHECK}\nEOF",
                     options=("--entrypoint", "bash"))
    assert ran.rc == 0, ran.err
    assert ran.out.split() == [str(UID), "/usr/bin/lrzip", "ca-ok"]
    assert ran.changed == []
    ran = docker_run("help")
    assert ran.rc == 0 and "modes:" in ran.out and ran.changed == []


def test_demo_end_to_end(demo):
    ran = demo.run
    assert ran.rc == 0, ran.out[-3000:] + ran.err[-2000:]
    assert "result:" in ran.out and "0 FAIL" in ran.out
    names = {p.name for p in demo.records.iterdir()}
    for f in ("submission.json", "README.md", "train_gpt.py", "train_seed42.log", "train_seed42.ptz"):
        assert f in names, sorted(names)
    assert outside_tmp(ran.changed) == [], ran.changed
    # the README's commands: the challenge's layout and the container's mounts, not this machine's
    readme = (demo.records / "README.md").read_text()
    assert f"DATA_PATH=./data/datasets/{demo.dataset.name}" in readme
    assert f"TOKENIZER_PATH=./data/tokenizers/{demo.tokenizer.name}" in readme
    assert "docker run --rm" in readme and "pgolf reproduce records" in readme
    assert "/records/demo/data" not in readme and str(demo.records.parent) not in readme


def test_verify_the_demo_folder_read_only(demo):
    assert demo.run.rc == 0
    before = snapshot(demo.records)
    ran = docker_run("verify", "records", mounts=(f"{demo.records}:/records/records:ro",))
    assert ran.rc == 0, ran.out[-2000:] + ran.err
    assert "0 FAIL" in ran.out.splitlines()[-1]
    assert outside_tmp(ran.changed) == [] and snapshot(demo.records) == before


def test_reproduce_from_the_artifacts_with_only_val_data(demo):
    assert demo.run.rc == 0
    mounts, env = val_mounts(demo)
    before = snapshot(demo.records)
    ran = docker_run("reproduce", "records", mounts=(*mounts, f"{demo.records}:/records/records:ro"), env=env)
    assert ran.rc == 0, ran.out[-3000:] + ran.err[-2000:]
    assert "reproduce: ok, every seed's val_bpb reproduced from its artifact" in ran.out
    assert "no network, no training shards under /data, inputs read-only" in ran.out
    assert outside_tmp(ran.changed) == [] and snapshot(demo.records) == before


# --- the error paths: one line, non-zero, nothing written ---------------------------------------

def test_gpu_mode_without_a_gpu(tmp_path):
    """record with the default (GPU) preset and no --gpus: stopped before anything is written."""
    data = tmp_path / "data"
    (data / "datasets" / "fineweb10B_sp8192").mkdir(parents=True)
    records = for_the_user(tmp_path / "records")
    ran = docker_run("record", "run1", mounts=(f"{data}:/data:ro", f"{records}:/records"))
    assert ran.rc == 1 and len(ran.err_lines) == 1, ran.err
    assert "needs NVIDIA GPUs and the container sees none: add --gpus all" in ran.err
    assert ran.changed == [] and list(records.iterdir()) == []


def test_missing_mounts(tmp_path):
    folder = tmp_path / "run1"
    folder.mkdir()
    ran = docker_run("reproduce", "run1", mounts=(f"{folder}:/records/run1:ro",))
    assert ran.rc == 1 and len(ran.err_lines) == 1, ran.err
    assert "/data: not mounted; mount the val shards and tokenizer read-only" in ran.err
    assert ran.changed == []
    ran = docker_run("verify", "run1")
    assert ran.rc == 1 and len(ran.err_lines) == 1, ran.err
    assert "/records/run1: no such records folder; mount it at /records" in ran.err
    assert ran.changed == []


def test_corrupt_artifact(demo, tmp_path):
    assert demo.run.rc == 0
    broken = tmp_path / "broken"
    shutil.copytree(demo.records, broken)
    art = broken / "train_seed42.ptz"
    data = bytearray(art.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])  # same size, other bytes
    art.write_bytes(bytes(data))
    mounts, env = val_mounts(demo)
    ran = docker_run("reproduce", "broken", "--seeds", "42", mounts=(*mounts, f"{broken}:/records/broken:ro"),
                     env=env)
    assert ran.rc == 1, ran.out[-2000:]
    verdicts = [ln for ln in ran.out.splitlines() if "FAIL: eval-only run" in ln]
    assert len(verdicts) == 1 and "train_seed42.ptz: checksum mismatch" in verdicts[0], ran.out[-2000:]
    assert "reproduce: FAIL (1 of 1 seed(s))" in ran.out
    assert outside_tmp(ran.changed) == []


def test_refuses_root_and_a_network(tmp_path):
    ran = docker_run("verify", options=("--user", "0"))
    assert ran.rc == 1 and len(ran.err_lines) == 1 and "refusing to run as root" in ran.err
    assert ran.changed == []
    # reproduce on docker's default bridge network (an interface besides lo; no traffic is sent)
    (tmp_path / "run1").mkdir()
    ran = docker_run("reproduce", "run1", mounts=(f"{tmp_path / 'run1'}:/records/run1:ro",), network="bridge")
    assert ran.rc == 1 and len(ran.err_lines) == 1, ran.err
    assert "reproduce must run without network (network interface(s) present: eth0)" in ran.err
    assert "add --network none" in ran.err and ran.changed == []
