"""The train / resume / evaluate CLI: help, a real run, and one-line errors for bad input."""

import hashlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ctgep._cli import main
from ctgep._experiment.data import FILES, write_idx

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ["--set", "model.sizes=[64, 16, 10]", "--set", "learning.learning_rates=[0.2, 0.05]",
        "--set", "phases.t_free=6", "--set", "phases.t_nudged=3", "--set", "data.max_train=200",
        "--set", "data.max_test=60", "--set", "learning.schedule=constant"]


@pytest.fixture(autouse=True)
def _no_user_data(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CTGEP_DATA_DIR", raising=False)


def _snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(pathlib.Path(folder).rglob("*")) if p.is_file()}


def _one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert err.startswith("ctgep: error:") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command, options", [
    ("train", ["--set", "--epochs", "--data-dir", "--out", "--quiet"]),
    ("resume", ["--epochs", "--data-dir", "--quiet"]),
    ("evaluate", ["--checkpoint", "--split", "--t-free", "--json", "--data-dir"]),
])
def test_help_explains_every_option(command, options, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in options:
        assert option in out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out), "-q"]) == 0
    return out


def test_train_evaluate_resume(run_dir, capsys):
    assert (run_dir / "metrics.csv").read_text().count("\n") == 3
    assert main(["evaluate", str(run_dir), "--checkpoint", "latest", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    assert result["error"] == pytest.approx(final["test_error"]) and result["n"] == 60
    assert main(["evaluate", str(run_dir), "--checkpoint", "latest", "--json", "--t-free", "40"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["t_free"] == 40.0
    assert main(["resume", str(run_dir), "--epochs", "3", "-q"]) == 0
    assert (run_dir / "metrics.csv").read_text().count("\n") == 4
    assert "epochs = 3" in (run_dir / "card.toml").read_text()


def _fake_mnist(folder, shape=(28, 28)):
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in FILES.items():
        n = 40 if "train" in key else 10
        write_idx(folder / (stem + ".gz"), np.zeros((n, *shape) if "images" in key else (n,), np.uint8))


@pytest.mark.parametrize("case", [
    "missing card", "malformed card", "unknown set key", "unknown dataset", "missing data",
    "truncated idx", "input size mismatch", "zero beta", "negative learning rate", "nan",
    "out exists",
])
def test_bad_input_gives_one_line_and_leaves_runs_alone(case, tmp_path, capsys, run_dir):
    before = _snapshot(run_dir)
    out = ["--out", str(tmp_path / "new"), "-q"]
    if case == "missing card":
        argv, words = ["train", str(tmp_path / "nope.toml"), *out], ["nope.toml", "not found"]
    elif case == "malformed card":
        (tmp_path / "bad.toml").write_text("[model\n")
        argv, words = ["train", str(tmp_path / "bad.toml"), *out], ["not valid TOML"]
    elif case == "unknown set key":
        argv, words = ["train", "--set", "learning.bta=1", *out], ["learning.bta"]
    elif case == "unknown dataset":
        argv, words = ["train", "--set", "data.dataset=cifar", *out], ["data.dataset", "cifar"]
    elif case == "missing data":
        argv = ["train", "--set", "data.dataset=mnist", "--set", "data.download=false",
                "--set", "model.sizes=[784, 10]", "--set", "learning.learning_rates=[0.1]",
                "--data-dir", str(tmp_path / "nodata"), *out]
        words = [str(tmp_path / "nodata"), "--data-dir", "CTGEP_DATA_DIR"]
    elif case == "truncated idx":
        _fake_mnist(tmp_path / "mnist")
        p = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
        p.write_bytes(p.read_bytes()[:-6])
        argv = ["train", "--set", "data.dataset=mnist", "--set", "data.verify=false",
                "--set", "model.sizes=[784, 10]", "--set", "learning.learning_rates=[0.1]",
                "--data-dir", str(tmp_path), *out]
        words = ["t10k-labels", "corrupted"]
    elif case == "input size mismatch":
        argv, words = ["train", *TINY, "--set", "model.sizes=[784, 16, 10]", *out], ["784", "64 features"]
    elif case == "zero beta":
        argv, words = ["train", "--set", "learning.beta=0", *out], ["learning.beta"]
    elif case == "negative learning rate":
        argv, words = ["train", "--set", "learning.learning_rates=[0.1, -1]", *out], ["learning_rates[1]"]
    elif case == "nan":
        argv = ["train", *TINY, "--set", "model.activation=tanh", "--set",
                "learning.learning_rates=[1e30, 1e30]", "--set", "training.progress_every=1", *out]
        words = ["NaN", "last good checkpoint"]
    else:
        argv, words = ["train", *TINY, "--out", str(run_dir), "-q"], ["already exists", "resume"]
    err = _one_line_error(capsys, main(argv))
    for w in words:
        assert w in err
    assert _snapshot(run_dir) == before
    if case not in ("nan",):
        assert not (tmp_path / "new").exists()


def test_resume_and_evaluate_errors(tmp_path, capsys, run_dir):
    before = _snapshot(run_dir)
    _one_line_error(capsys, main(["resume", str(tmp_path)]))
    _one_line_error(capsys, main(["evaluate", str(tmp_path / "missing")]))
    _one_line_error(capsys, main(["evaluate", str(run_dir), "--split", "val"]))
    _one_line_error(capsys, main(["evaluate", str(run_dir), "--t-free", "-1"]))
    assert _snapshot(run_dir) == before


def test_console_exit_status_and_stderr():
    r = subprocess.run([sys.executable, "-m", "ctgep", "train", "--set", "nosuch.key=1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("ctgep: error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
