"""pgolf/pack.py: bundling checks, stripping, reproducible packing, and the packed file running."""

from __future__ import annotations

import ast
import base64
import lzma
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pgolf.pack import (
    BUNDLE_FILENAME,
    MODULE_ORDER,
    NOT_BUNDLED,
    PackError,
    bundle_source,
    check_module_set,
    cli,
    pack,
    pack_source,
    repo_root,
    strip_source,
    trainer_modules,
    unpack_source,
)

FAKE = {
    "config": '''
        """Config module docstring (stripped from the bundle)."""

        from __future__ import annotations

        import os
        from dataclasses import dataclass

        BANNER = """line one # not a comment

        line three after a blank line"""


        @dataclass
        class Cfg:
            """Only a docstring would be left without stripping care."""

            greeting: str = "hello"  # trailing comment

            @classmethod
            def from_env(cls) -> Cfg:
                return cls(os.environ.get("FAKE_GREETING", "hello"))


        class Empty(Exception):
            """Docstring as the only statement: becomes pass."""
        ''',
    "util": '''
        from __future__ import annotations

        import os

        from trainer.config import BANNER, Cfg


        def helper(cfg: Cfg) -> str:
            # a comment line
            return f"{cfg.greeting} from helper"


        def boom() -> None:
            raise RuntimeError("boom in util")
        ''',
    "main": '''
        from __future__ import annotations

        import inspect
        import os

        from trainer.config import BANNER, Cfg, Empty
        from trainer.util import boom, helper


        def main() -> None:
            print(helper(Cfg.from_env()))
            print(repr(BANNER))
            print("getsource:", inspect.getsource(helper).splitlines()[0])
            print("file:", os.path.basename(__file__))
            print("empty:", Empty.__mro__[1].__name__)
            if os.environ.get("FAKE_BOOM"):
                boom()
        ''',
}
FAKE = {k: textwrap.dedent(v).lstrip() for k, v in FAKE.items()}
ORDER = ["config", "util", "main"]


def write_fake(root: Path, overrides: dict[str, str] | None = None) -> Path:
    src = root / "trainer"
    src.mkdir(parents=True, exist_ok=True)
    (src / "__init__.py").write_text("")
    for name, text in {**FAKE, **(overrides or {})}.items():
        if text is None:
            (src / f"{name}.py").unlink(missing_ok=True)
        else:
            (src / f"{name}.py").write_text(text)
    return src


def fake_pack(tmp_path: Path, out: Path, **kw):
    return pack(out, src_dir=tmp_path / "trainer", modules=kw.pop("modules", ORDER), not_bundled=[], **kw)


def run_packed(path: Path, cwd: Path, **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e.update(env)
    return subprocess.run([sys.executable, str(path)], cwd=cwd, env=e, capture_output=True, text=True,
                          timeout=60)


def test_pack_is_reproducible_and_runs(tmp_path):
    write_fake(tmp_path)
    a, b = tmp_path / "a" / "train_gpt.py", tmp_path / "b" / "train_gpt.py"
    ra, rb = fake_pack(tmp_path, a), fake_pack(tmp_path, b)
    assert a.read_bytes() == b.read_bytes() and ra.sha256 == rb.sha256
    assert ra.packed_bytes == a.stat().st_size
    assert not list(a.parent.glob(".*tmp*"))  # no temporary file left behind
    run_dir = tmp_path / "elsewhere"  # no trainer/ package importable from here
    run_dir.mkdir()
    p = run_packed(a, run_dir, FAKE_GREETING="hi")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "hi from helper"
    assert lines[1] == repr("line one # not a comment\n\nline three after a blank line")
    assert lines[2] == "getsource: def helper(cfg: Cfg) -> str:"
    assert lines[3] == "file: train_gpt.py"  # __file__ is the counted file
    assert lines[4] == "empty: Exception"


def test_traceback_shows_bundled_source(tmp_path):
    write_fake(tmp_path)
    out = tmp_path / "train_gpt.py"
    fake_pack(tmp_path, out)
    p = run_packed(out, tmp_path, FAKE_BOOM="1")
    assert p.returncode != 0
    assert f'File "{BUNDLE_FILENAME}"' in p.stderr
    assert 'raise RuntimeError("boom in util")' in p.stderr
    assert "RuntimeError: boom in util" in p.stderr


def test_bundle_drops_imports_strips_and_hoists(tmp_path):
    write_fake(tmp_path)
    src = bundle_source(tmp_path / "trainer", ORDER, not_bundled=[])
    assert src.count("from __future__ import annotations") == 1 and src.startswith("from __future__")
    assert "from trainer" not in src and "trainer." not in src.replace("# ---- trainer/", "")
    assert "docstring" not in src.lower() and "a comment line" not in src and "trailing comment" not in src
    assert src.rstrip().endswith('if __name__ == "__main__":\n    main()')
    compile(src, "<t>", "exec")
    unstripped = bundle_source(tmp_path / "trainer", ORDER, not_bundled=[], strip=False)
    assert "a comment line" in unstripped and len(unstripped) > len(src)


def test_strip_source_keeps_strings_and_code():
    code = textwrap.dedent('''
        """Module doc."""
        import os  # why
        X = """a # b

        c"""
        Y = f"""{X}
        # still string
        """


        def f():
            """Only doc."""


        def g(x):
            """Doc."""
            # comment
            return x + 1  # add


        class C: """same-line doc stays"""
        ''')
    out = strip_source(code)
    ns: dict = {}
    exec(compile(out, "<s>", "exec"), ns)
    assert ns["X"] == "a # b\n\nc" and ns["Y"] == "a # b\n\nc\n# still string\n"
    assert ns["f"]() is None and ns["g"](1) == 2 and ns["C"].__doc__ == "same-line doc stays"
    assert "why" not in out and "Module doc" not in out and "# comment" not in out and "# add" not in out
    assert out.count("\n\n") == 1  # the blank line inside X only


def test_check_reports_stale_and_cli(tmp_path, monkeypatch, capsys):
    write_fake(tmp_path)
    out = tmp_path / "train_gpt.py"
    assert fake_pack(tmp_path, out, check=True).matches is False  # missing file
    fake_pack(tmp_path, out)
    ok = fake_pack(tmp_path, out, check=True)
    assert ok.matches is True and "up to date" in ok.message
    write_fake(tmp_path, {"util": FAKE["util"].replace("from helper", "from a changed helper")})
    stale = fake_pack(tmp_path, out, check=True)
    assert stale.matches is False and "stale" in stale.message and str(out) in stale.message
    assert "run python -m pgolf pack" in stale.message
    assert "changed helper" in unpack_source(pack_source(bundle_source(tmp_path / "trainer", ORDER,
                                                                       not_bundled=[])).encode())
    # the same source packed by another compressor build: said plainly
    fresh = bundle_source(tmp_path / "trainer", ORDER, not_bundled=[])
    other = base64.b85encode(lzma.compress(fresh.encode(), preset=0)).decode()
    out.write_text(re.sub(r'b85decode\("[^"]*"\)', lambda _m: f'b85decode("{other}")', pack_source(fresh)))
    msg = fake_pack(tmp_path, out, check=True).message
    assert "same source" in msg and "liblzma" in msg
    # the CLI: point the default source at the fake tree
    import pgolf.pack as pk

    monkeypatch.setattr(pk, "repo_root", lambda: tmp_path)
    monkeypatch.setattr(pk, "MODULE_ORDER", ORDER)
    monkeypatch.setattr(pk, "NOT_BUNDLED", [])
    assert cli(["--out", str(out), "--check"]) == 1
    assert cli(["--out", str(out)]) == 0
    assert cli(["--out", str(out), "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, modules, expect", [
    ({"util": FAKE["util"] + "\n\ndef helper2():\n    return 1\nBANNER = 2\n"}, ORDER,
     "top-level name `BANNER` is also defined"),
    ({"util": FAKE["util"] + "\nimport trainer.config\n"}, ORDER, "`import trainer.config`"),
    ({"main": FAKE["main"] + "\n\ndef other():\n    return trainer.util\n"}, ORDER, "`trainer.util`"),
    ({"main": FAKE["main"].replace("import boom, helper", "import boom as b2, helper")}, ORDER,
     "no aliases"),
    ({"config": FAKE["config"] + "\nfrom trainer.util import helper\n"}, ORDER,
     "comes later in MODULE_ORDER"),
    ({"main": FAKE["main"].replace("import boom, helper", "import (boom,\n    helper)")}, ORDER,
     "must fit on one line"),
    ({"main": FAKE["main"].replace("import boom, helper", "import boom, helper, nothere")}, ORDER,
     "`nothere` is not defined at the top level"),
    ({"main": FAKE["main"] + '\nif __name__ == "__main__":\n    main()\n'}, ORDER, "`if __name__"),
    ({"main": FAKE["main"] + "\n\ndef f():\n    from trainer.util import boom\n"}, ORDER,
     "must be at the top level"),
    ({"extra": "X = 1\n"}, ORDER, "modules not in pgolf/pack.py MODULE_ORDER: extra"),
    ({}, ["config", "util", "gone", "main"], "lists modules that do not exist: gone"),
    ({"main": "def not_main():\n    pass\n"}, ORDER, "no bundled module defines a top-level main()"),
    ({"main": FAKE["main"] + "\n\ndef f(:\n"}, ORDER, "syntax error"),
])
def test_bundle_refuses_unbundleable_code(tmp_path, overrides, modules, expect):
    write_fake(tmp_path, overrides)
    with pytest.raises(PackError) as e:
        bundle_source(tmp_path / "trainer", modules, not_bundled=[])
    msg = str(e.value)
    assert expect in msg and "\n" not in msg
    assert "trainer" in msg  # names the file or folder


def test_identical_imports_in_two_modules_are_fine(tmp_path):
    write_fake(tmp_path)  # util and main both `import os`; config and main both import Cfg
    src = bundle_source(tmp_path / "trainer", ORDER, not_bundled=[])
    assert src.count("import os\n") == 3


def test_real_trainer_modules_are_all_listed():
    src = repo_root() / "trainer"
    unlisted = sorted(set(trainer_modules(src)) - set(MODULE_ORDER) - set(NOT_BUNDLED))
    assert not unlisted, f"add to pgolf/pack.py MODULE_ORDER (or NOT_BUNDLED): {unlisted}"


def test_real_trainer_bundles_and_compiles():
    src = repo_root() / "trainer"
    present = [m for m in MODULE_ORDER if (src / f"{m}.py").exists()]
    assert {"config", "quant", "artifact", "accounting"} <= set(present)
    bundle = bundle_source(src, present, strict=False, entry="main" if "main" in present else None)
    tree = ast.parse(bundle)
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert {"quantize_model", "load_artifact", "fit_to_limit", "Hyperparameters"} <= names
    compile(bundle, BUNDLE_FILENAME, "exec")


def test_real_trainer_module_set_is_complete():
    src = repo_root() / "trainer"
    missing = [m for m in MODULE_ORDER if not (src / f"{m}.py").exists()]
    assert not missing, f"MODULE_ORDER names missing trainer modules: {missing}"
    check_module_set(src, MODULE_ORDER, NOT_BUNDLED)
    res = pack(Path(os.devnull).parent / "unused", check=True)  # bundles strictly, writes nothing
    assert res.packed_bytes > 0


def test_committed_pack_is_fresh_and_runs():
    """The counted submission/train_gpt.py is what packing trainer/ gives now, and it starts."""
    root = repo_root()
    committed = root / "submission" / "train_gpt.py"
    assert committed.exists(), f"{committed}: not packed (run nox -s pack)"
    res = pack(committed, check=True)
    assert res.matches, res.message
    e = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e["PRESET"] = "no_such_preset"  # main() must get as far as reading the hyperparameters
    p = subprocess.run([sys.executable, str(committed)], cwd=committed.parent, env=e, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0 and "no_such_preset" in p.stderr, p.stderr[-2000:]


def _without_docstrings(tree: ast.AST) -> str:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


@pytest.mark.parametrize("path", sorted((repo_root() / "trainer").glob("*.py")) + [Path(__file__)],
                         ids=lambda p: p.name)
def test_stripping_keeps_the_code_of_real_modules(path):
    """Stripped source parses to the same AST as the original minus its docstrings."""
    src = path.read_text(encoding="utf-8")
    assert _without_docstrings(ast.parse(strip_source(src))) == _without_docstrings(ast.parse(src))
