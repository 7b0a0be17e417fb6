"""Every example a user is shown runs: the `ctgep …` lines of the `--help` epilogs, README.md and
docs/*.md, and their Python blocks — on tiny settings (one epoch, a few examples), so that a
broken example fails here. Those that need MNIST, the committed runs or minutes of work
(`ctgep check`, `ctgep stability`, the MNIST commands) are marked slow."""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY_TRAIN = ["--set", "training.epochs=1", "--set", "data.max_train=100", "--set", "data.max_test=40"]
TINY_RECORD = ["--samples", "2", "--t-free", "5", "--t-nudged", "5"]


def _epilogs():
    from ctgep._cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                yield f"ctgep {name} --help", sub.epilog or ""


def _markdown():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        yield str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")


def _commands_in(text, markdown):
    """`ctgep …` command lines: in epilogs and fenced code blocks (with `\\` continuations) and
    in backticks. Synopses (`[OPTIONS]`, `…`, `|`), placeholders (`N`, `RUN_DIR`) and bare
    mentions (`ctgep check`, `ctgep evaluate --split train`) are not examples."""
    text = re.sub(r"\\\n\s*", " ", text)
    blocks = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", text, re.S)) if markdown else text
    found = re.findall(r"^\s*(ctgep [^\n#]*?)\s*(?:#.*)?$", blocks, re.M)
    found += re.findall(r"`(ctgep [^`]+)`", text)
    out = []
    for c in found:
        c = " ".join(c.split())
        words = c.split()
        if re.search(r"(^|\s)\[", c) or any(t in c for t in ("…", "...", "|")) or len(words) < 2:
            continue
        if any(re.fullmatch(r"[A-Z][A-Z_]*", w) and w != "DIR" for w in words):
            continue  # a placeholder
        if words[-1].startswith("--") and words[-1] not in ("--help", "-q", "--quiet", "--json"):
            continue  # an option named, not used
        if words[1] in ("evaluate", "resume") and (len(words) < 3 or words[2].startswith("-")):
            continue  # no run directory: a mention
        if words[1] in ("check", "stability", "record", "readout") and len(words) == 2 and markdown:
            continue  # the command named in prose
        if c not in out:
            out.append(c)
    return out


def _examples():
    seen = {}
    for where, text in [*_epilogs(), *_markdown()]:
        for c in _commands_in(text, not where.startswith("ctgep ")):
            seen.setdefault(c, where)
    return sorted(seen.items())


def _slow(command):
    """The long examples, and (to keep the default suite within CI's time) all but the first of
    each subcommand's; `-m slow` runs every one."""
    words = command.split()
    if (len(words) < 2 or words[1] in ("check", "stability") or "mnist" in command or "studies/" in command
            or " DIR" in command or "fashion" in command):
        return True
    first = _FIRST.setdefault(words[1], command)
    return first != command


_FIRST: dict[str, str] = {}


EXAMPLES = [pytest.param(c, w, id=c, marks=[pytest.mark.slow] if _slow(c) else [])
            for c, w in _examples()]


def test_the_examples_are_found():
    commands = [c for c, _ in _examples()]
    assert any(c.startswith("ctgep train --set learning.beta=0.5") for c in commands)
    assert any("--layers=-1,1" in c for c in commands)
    assert any(c.startswith("ctgep evaluate studies/mnist/") for c in commands)
    assert not any("--layers -1" in c for c in commands), "argparse reads `-1,1` as an option"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from ctgep._cli import main

    run = tmp_path_factory.mktemp("examples") / "run"
    assert main(["train", *TINY_TRAIN, "--out", str(run), "-q"]) == 0
    return run


@pytest.mark.parametrize("command, where", EXAMPLES)
def test_example_runs(command, where, trained, tmp_path, monkeypatch, capsys):
    from ctgep._cli import main

    data = os.environ.get("CTGEP_DATA_DIR")
    if " DIR" in command or "mnist" in command:
        if not data or not pathlib.Path(data).is_dir():
            pytest.skip("needs MNIST in $CTGEP_DATA_DIR")
        command = command.replace(" DIR", f" {data}").replace("~/data/mnist", data)
    argv = shlex.split(command)[1:]
    if argv[0] == "train" and "--out" in argv:  # never into the repository's studies/
        argv[argv.index("--out") + 1] = str(tmp_path / "run")
    argv = [str(trained) if re.fullmatch(r"runs/[\w-]+", a) and argv[0] != "train" else a for a in argv]
    argv = [str(trained / a[4:]) if a.startswith("run/") else a for a in argv]
    argv = [str(ROOT / a) if a.startswith(("studies/", "models/")) else a for a in argv]
    monkeypatch.chdir(tmp_path)
    if argv[0] == "train":
        argv += TINY_TRAIN + ["-q"]
        if "--out" not in argv:
            argv += ["--out", str(tmp_path / "run")]
    if argv[0] == "record":
        argv += TINY_RECORD
    try:
        rc = main(argv)
    except SystemExit as e:  # --help
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 0, f"{where}: `{command}` exited {rc}: {err}"


def _python_blocks():
    for where, text in _markdown():
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", text, re.S)):
            slow = where != "README.md"
            yield pytest.param(block, id=f"{where}#{i}", marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("code", list(_python_blocks()))
def test_python_block_runs(code, tmp_path):
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "MPLBACKEND": "Agg"})
    assert r.returncode == 0, r.stderr[-3000:]
