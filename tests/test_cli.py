"""The CLI: help, a real run, one-line errors for bad input, and the exit statuses."""

import hashlib
import json
import pathlib
import subprocess
import sys

import equinox as eqx
import jax
import numpy as np
import pytest

import ctgep
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


def _one_line_error(capsys, rc, code=2):
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert err.startswith("ctgep: error:") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command, options", [
    ("train", ["--set", "--epochs", "--init", "--data-dir", "--out", "--quiet"]),
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


def test_train_init_starts_from_another_runs_weights(run_dir, tmp_path, capsys):
    """`--init RUN[:best]` copies the checkpoint's weights into the new run (recorded in its card
    as training.init) with a fresh optimiser: with 0 epochs its checkpoint is that network."""
    out = tmp_path / "tuned"
    assert main(["train", *TINY, "--set", "phases.t_free=8", "--init", f"{run_dir}:best", "--epochs", "0",
                 "--out", str(out), "-q"]) == 0
    assert "starting from the best checkpoint of" in capsys.readouterr().out
    assert f'init = "{run_dir}:best"' in (out / "card.toml").read_text()
    source, tuned = ctgep.load_run(run_dir, "best"), ctgep.load_run(out)
    for a, b in zip(*(jax.tree_util.tree_leaves(eqx.filter(r.net, eqx.is_array)) for r in (source, tuned))):
        np.testing.assert_array_equal(a, b)
    assert tuned.card.phases.t_free == 8  # the new card's settings, the old run's weights
    fresh = ctgep.train("digits", tmp_path / "fresh", overrides=TINY[1::2], epochs=0, progress=False,
                        log=lambda *a: None)
    assert not np.array_equal(fresh.net.Wf[0], tuned.net.Wf[0])


def _fake_mnist(folder, shape=(28, 28)):
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in FILES.items():
        n = 40 if "train" in key else 10
        write_idx(folder / (stem + ".gz"), np.zeros((n, *shape) if "images" in key else (n,), np.uint8))


@pytest.mark.parametrize("case", [
    "missing card", "malformed card", "unknown set key", "unknown dataset", "missing data",
    "data-dir typo", "truncated idx", "input size mismatch", "zero beta", "negative learning rate",
    "negative epochs", "nan", "out exists", "init not a run", "init another architecture",
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
        (tmp_path / "nodata").mkdir()
        argv = ["train", "--set", "data.dataset=mnist", "--set", "data.download=false",
                "--set", "model.sizes=[784, 10]", "--set", "learning.learning_rates=[0.1]",
                "--data-dir", str(tmp_path / "nodata"), *out]
        words = [str(tmp_path / "nodata"), "--data-dir", "CTGEP_DATA_DIR"]
    elif case == "data-dir typo":  # downloading is on: still no folder made, no download tried
        argv = ["train", "--set", "data.dataset=mnist", "--set", "model.sizes=[784, 10]",
                "--set", "learning.learning_rates=[0.1]", "--data-dir", str(tmp_path / "mnsit"), *out]
        words = [str(tmp_path / "mnsit"), "does not exist"]
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
    elif case == "negative epochs":
        argv, words = ["train", "--epochs", "-1", *out], ["--epochs"]
    elif case == "init not a run":
        argv, words = ["train", *TINY, "--init", str(tmp_path / "nowhere"), *out], ["training.init", "nowhere", "not a ctgep run"]
    elif case == "init another architecture":
        argv = ["train", *TINY, "--set", "model.sizes=[64, 32, 10]", "--init", f"{run_dir}:best", *out]
        words = ["training.init", "does not fit", "[64, 16, 10]", "[64, 32, 10]"]
    elif case == "nan":
        argv = ["train", *TINY, "--set", "model.activation=tanh", "--set",
                "learning.learning_rates=[1e30, 1e30]", "--set", "training.progress_every=1", *out]
        words = ["NaN", "last good checkpoint"]
    else:
        argv, words = ["train", *TINY, "--out", str(run_dir), "-q"], ["already exists", "resume"]
    err = _one_line_error(capsys, main(argv), 1 if case == "nan" else 2)
    for w in words:
        assert w in err
    assert _snapshot(run_dir) == before
    if case not in ("nan",):
        assert not (tmp_path / "new").exists()
    assert not (tmp_path / "mnsit").exists() and not (tmp_path / "cache").exists()


def test_resume_and_evaluate_errors(tmp_path, capsys, run_dir):
    before = _snapshot(run_dir)
    assert "not a ctgep run directory" in _one_line_error(capsys, main(["resume", str(tmp_path)]))
    _one_line_error(capsys, main(["evaluate", str(tmp_path / "missing")]))
    _one_line_error(capsys, main(["evaluate", str(run_dir), "--split", "val"]))
    _one_line_error(capsys, main(["evaluate", str(run_dir), "--t-free", "-1"]))
    assert _snapshot(run_dir) == before


def test_check_and_record_errors(tmp_path, capsys):
    """`ctgep check` and `ctgep record` report bad input the same way (one line, status 2)."""
    assert "not found" in _one_line_error(capsys, main(["check", "--card", str(tmp_path / "nope.toml"),
                                                        "--out", str(tmp_path / "c")]))
    assert "not a ctgep run directory" in _one_line_error(
        capsys, main(["check", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "c")]))
    assert "--samples" in _one_line_error(capsys, main(["record", "--samples", "0", "--out", str(tmp_path / "r")]))
    assert "--sizes" in _one_line_error(capsys, main(["record", "--sizes", "64,x", "--out", str(tmp_path / "r")]))
    assert "not both" in _one_line_error(capsys, main(["record", str(tmp_path), "--checkpoint", str(tmp_path),
                                                       "--out", str(tmp_path / "r")]))
    assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("error, code", [
    (ctgep.CardError("card 'x': learning.beta=0 must be positive"), 2),
    (ctgep.DataError("mnist files not found"), 2),
    (ctgep.UsageError("--split='x' is unknown"), 2),
    (ctgep.RunDirError("--out x already exists"), 2),
    (ctgep.TrainingError("the parameters became NaN"), 1),
    (ctgep.ConvergenceError("the free phase did not settle\nwithin t_max"), 1),
    (PermissionError(13, "Permission denied", "/runs/x"), 1),
    (KeyboardInterrupt(), 130),
])
def test_every_error_reaches_the_user_in_one_place(error, code, monkeypatch, capsys):
    """`main` turns ctgep's errors into one line and an exit status: 2 bad input, 1 failed work."""
    from ctgep._experiment import loop

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(loop, "train", fail)
    assert main(["train", "-q"]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    if code == 130:
        assert err == "ctgep: interrupted"
    else:
        words = ["Permission denied", "/runs/x"] if isinstance(error, OSError) else str(error).split()
        assert err.startswith("ctgep: error: ") and all(w in err for w in words)


def test_the_error_hierarchy():
    for cls in (ctgep.CardError, ctgep.DataError, ctgep.UsageError):
        assert issubclass(cls, ctgep.CtgepError) and issubclass(cls, ValueError) and cls.exit_code == 2
    for cls in (ctgep.TrainingError, ctgep.ConvergenceError):
        assert issubclass(cls, ctgep.CtgepError) and issubclass(cls, RuntimeError) and cls.exit_code == 1
    assert issubclass(ctgep.RunDirError, ctgep.TrainingError) and ctgep.RunDirError.exit_code == 2


def test_console_exit_status_and_stderr():
    r = subprocess.run([sys.executable, "-m", "ctgep", "train", "--set", "nosuch.key=1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("ctgep: error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# The first contact: fast help and card errors, no JAX on `import ctgep`


def _timed(args, **kw):
    import time

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, **kw)
    return r, time.perf_counter() - t0


def test_import_ctgep_does_not_import_jax_and_names_stay_public():
    code = ("import sys, ctgep; assert 'jax' not in sys.modules, 'jax imported'; "
            "names = dir(ctgep); assert {'train', 'LayeredNetwork', 'record', 'RESULTS', 'gradients', "
            "'stability', 'ConvNetwork'} <= set(names), names; "
            "from ctgep import LayeredNetwork, CardError; assert ctgep.train.__module__.endswith('loop'); "
            "assert 'jax' in sys.modules; print('ok')")
    r, _ = _timed(["-c", code])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_every_public_name_resolves():
    for name in ctgep.__all__:
        assert getattr(ctgep, name) is not None, name
    with pytest.raises(AttributeError):
        ctgep.no_such_name


@pytest.mark.parametrize("args", [["--help"], ["train", "--set", "nosuch.key=1"],
                                  ["train", "--set", "model.sizes=[64, 16, 16, 10]"]])
def test_help_and_card_errors_answer_within_a_second(args):
    """`ctgep --help` and a bad card never import JAX: < 1 s (2 s allowed on a loaded CI machine)."""
    r, _ = _timed(["-m", "ctgep", *args])  # warm the file cache
    best = min(_timed(["-m", "ctgep", *args])[1] for _ in range(3))
    assert r.returncode in (0, 2), r.stderr
    assert best < 2.0, f"python -m ctgep {' '.join(args)} took {best:.2f} s"


def test_cli_modules_import_no_jax():
    r, _ = _timed(["-c", "import sys, ctgep._cli as c; c.build_parser(); print('jax' in sys.modules)"])
    assert r.stdout.strip() == "False", r.stderr


def test_card_names_agree_with_the_modules_that_define_them():
    """cards.py spells the names out (no JAX import to read a card); they must stay in step."""
    from ctgep._dynamics.activations import ACTIVATIONS
    from ctgep._experiment import cards
    from ctgep._learning.homeostasis import HOMEOSTASIS_PARAMS
    from ctgep._learning.rules import NUDGINGS, RULES
    from ctgep._simulation.solvers import SOLVERS

    assert sorted(cards.ACTIVATIONS) == sorted(ACTIVATIONS)
    assert sorted(cards.SOLVERS) == sorted(SOLVERS)
    assert tuple(cards.RULES) == tuple(RULES) and tuple(cards.NUDGINGS) == tuple(NUDGINGS)
    assert tuple(cards.HOMEOSTASIS_PARAMS) == HOMEOSTASIS_PARAMS


# ----------------------------------------------------------------------------------------------
# evaluate: `latest` by default, `best` named for what it is


def test_evaluate_defaults_to_latest_and_warns_about_a_best_chosen_on_the_test_set(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["checkpoint"] == "latest" and "selected_on" not in result
    assert "chosen on the test set" not in captured.err
    assert main(["evaluate", str(run_dir), "--checkpoint", "best"]) == 0
    captured = capsys.readouterr()
    assert "best on the test set checkpoint" in captured.out
    assert "\nerror per class: 0: " in captured.out
    warning = [line for line in captured.err.splitlines() if "chosen on the test set" in line]
    assert len(warning) == 1 and warning[0].startswith("ctgep: warning:")
    assert json.loads((run_dir / "checkpoints" / "best.json").read_text())["best"]["selected_on"] == "test"
    help_text = ctgep._cli.build_parser()._subparsers._group_actions[0].choices["evaluate"].format_help()
    assert "latest" in help_text and "test set" in help_text
    assert ctgep.load_run(run_dir).checkpoint["tag"] == "latest"


# ----------------------------------------------------------------------------------------------
# Never silent: non-convergence, and no progress bar in a log file


def test_nonconvergence_is_counted_per_cause_warned_and_summarised(tmp_path):
    out = tmp_path / "unsettled"
    # 3 time constants cannot settle the nudged phase to tol 1e-6: every epoch warns.
    r = subprocess.run([sys.executable, "-m", "ctgep", "train", *TINY, "--set", "phases.tol=1e-6",
                        "--epochs", "2", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env={**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path / "c")})
    assert r.returncode == 0, r.stderr
    warnings = [l for l in r.stdout.splitlines() if l.startswith("warning: epoch")]
    assert len(warnings) == 2 and "nudged phases did not settle" in warnings[0]
    assert "horizon_reached" in warnings[0]
    # stderr is a pipe, not a terminal: no progress bar, the epoch lines only (on stdout)
    assert "\r" not in r.stderr and "batch/s" not in r.stderr and len(r.stderr.splitlines()) <= 2, r.stderr
    assert sum(l.startswith("epoch ") for l in r.stdout.splitlines()) == 2
    assert "not settled" in r.stdout
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    for code in ctgep.RESULTS:
        if code != ctgep.RESULTS.converged:
            assert f"free_{code.name}" in header and f"nudged_{code.name}" in header
    summary = json.loads((out / "summary.json").read_text())
    nudged = summary["nonconverged"]["nudged"]
    assert nudged["final"] > 0.5 and nudged["final_causes"]["horizon_reached"] == pytest.approx(nudged["final"])
    assert summary["final"]["nudged_horizon_reached"] == pytest.approx(nudged["final"])


def test_console_progress_draws_bars_only_on_a_terminal():
    import io

    from ctgep._experiment.progress import ConsoleProgress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert ConsoleProgress(True, stream=Tty()).bars
    assert not ConsoleProgress(True, stream=io.StringIO()).bars
    assert not ConsoleProgress(False, stream=Tty()).bars


def test_nonconverged_warning_line():
    from ctgep._experiment.progress import nonconverged_warning

    row = {"epoch": 3, "free_nonconverged": 0.0, "nudged_nonconverged": 1.0, "nudged_horizon_reached": 0.75,
           "nudged_nonfinite_state": 0.25}
    line = nonconverged_warning(row, 0.05)
    assert line.startswith("warning: epoch 3:") and "100.00% of the nudged phases" in line
    assert "horizon_reached 75.00%" in line and "nonfinite_state 25.00%" in line and "free" not in line
    assert nonconverged_warning(dict(row, nudged_nonconverged=0.01), 0.05) == ""
    # An Euler card is pointed at the stability analysis and the backtracking step.
    card = ctgep.load_card("digits", overrides=["phases.solver=euler"])
    assert "phases.backtrack = true" in nonconverged_warning(row, 0.05, card)
    card = ctgep.load_card("digits", overrides=["phases.solver=euler", "phases.backtrack=true"])
    assert "backtrack" not in nonconverged_warning(row, 0.05, card)
