"""nox sessions: every user-facing job of the bundle. `nox -l` lists them; `nox -s NAME -- ARGS`.

Each session installs the project into its own virtualenv, pinned by constraints.txt (the single
source of versions, shared with docker/), then calls the project's CLI, so a missing install step
fails here rather than on a user's machine.
"""

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

PYTHON = None  # the interpreter nox runs under (3.11+)


def _install(session: nox.Session, extras: str = "") -> None:
    session.install("-c", "constraints.txt", "-e", f".{extras}")


def _pgolf(session: nox.Session, command: str) -> None:
    _install(session)
    session.run("python", "-m", "pgolf", command, *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (CPU): ruff, then pytest. Args go to pytest."""
    _install(session, "[dev]")
    session.run("ruff", "check", ".")
    session.run("pytest", "-q", "-n", "2", "--dist", "loadfile", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job on the embedded default: data from stdlib text, 3 seeds on CPU, verify."""
    _pgolf(session, "demo")


@nox.session(python=PYTHON)
def data(session: nox.Session) -> None:
    """Prepare data: download FineWeb shards + tokenizer, or --from-text FILE... offline."""
    _pgolf(session, "data")


@nox.session(python=PYTHON)
def record(session: nox.Session) -> None:
    """Three seeds through torchrun (default 42 314 999), then submission.json from the logs."""
    _pgolf(session, "record")


@nox.session(python=PYTHON)
def size(session: nox.Session) -> None:
    """Code bytes + compressed model bytes per seed against 16,000,000 (decimal)."""
    _pgolf(session, "size")


@nox.session(python=PYTHON)
def budget(session: nox.Session) -> None:
    """Train and eval wallclock per seed from the logs against 600 s each."""
    _pgolf(session, "budget")


@nox.session(python=PYTHON)
def schema(session: nox.Session) -> None:
    """Validate submission.json against the project's JSON Schema (Draft 2020-12)."""
    _pgolf(session, "schema")


@nox.session(python=PYTHON)
def reproduce(session: nox.Session) -> None:
    """Re-run the final evaluation from each saved artifact and compare with the logged val_bpb."""
    _pgolf(session, "reproduce")


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    """Loss-curve PNG per seed and a markdown table of the seeds (mean, std)."""
    _pgolf(session, "report")


@nox.session(python=PYTHON)
def pack(session: nox.Session) -> None:
    """Bundle trainer/ into the self-extracting submission/train_gpt.py (reproducible)."""
    _pgolf(session, "pack")


@nox.session(python=PYTHON)
def image(session: nox.Session) -> None:
    """Build the container image from the Debian archive and the package index (docker/build.py):
    engine, base (pulled, or made with debootstrap), hash-checked wheelhouse, docker build; prints
    size and build time. Args go to docker/build.py: `-- --variant cpu` is CI's CPU-torch image."""
    session.install("-c", "constraints.txt", "packaging")
    session.run("python", "docker/build.py", *session.posargs)


@nox.session(python=PYTHON)
def verify(session: nox.Session) -> None:
    """The reviewer's full check of a records folder: nox -s verify -- PATH."""
    _install(session)
    session.run("python", "-m", "verify", *session.posargs)
