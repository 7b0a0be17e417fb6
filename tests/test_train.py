"""Training loop: run directory, reproducibility, per-layer rates, divergence, exact resume."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import ctgep
from ctgep import load_dataset
from ctgep._experiment.build import _param_labels, trainable

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMING = {"wall_time", "examples_per_s"}
SMALL = ["model.sizes=[64, 24, 16, 10]", "learning.learning_rates=[0.2, 0.1, 0.05]",
         "phases.t_free=10", "phases.t_nudged=4", "training.epochs=2", "training.progress_every=3",
         "learning.schedule=constant"]


@pytest.fixture
def small_data():
    """A 240/100 slice of digits so that an epoch is 12 batches (injected: `data=small_data`)."""
    d = load_dataset("digits")
    import dataclasses

    return dataclasses.replace(d, x_train=d.x_train[:240], y_train=d.y_train[:240],
                               x_test=d.x_test[:100], y_test=d.y_test[:100])


def _params(net):
    return eqx.filter(net, eqx.is_inexact_array)


def _leaves(net):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(eqx.filter(net, eqx.is_inexact_array))]


def _same_params(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def _rows(run_dir):
    return (pathlib.Path(run_dir) / "metrics.csv").read_text().splitlines()


def _without_timing(rows):
    header = rows[0].split(",")
    keep = [i for i, h in enumerate(header) if h not in TIMING]
    return [[r.split(",")[i] for i in keep] for r in rows]


def test_run_directory_contents_and_reproducibility(small_data, tmp_path):
    quiet = dict(progress=False, log=lambda *a: None, data=small_data)
    step = ctgep.build_training_step(ctgep.load_card("digits", SMALL), 12)  # compiled once, used twice
    a = ctgep.train("digits", tmp_path / "a", overrides=SMALL, step=step, **quiet)
    b = ctgep.train("digits", tmp_path / "b", overrides=SMALL, step=step, **quiet)
    for name in ("card.toml", "metrics.csv", "summary.json", "training.png"):
        assert (tmp_path / "a" / name).is_file()
    assert (tmp_path / "a" / "training.png").read_bytes()[:4] == b"\x89PNG"
    assert ctgep.load_card(tmp_path / "a" / "card.toml") == a.card
    rows = _rows(tmp_path / "a")
    header = rows[0].split(",")
    for col in ("train_error", "test_error", "train_cost", "free_time", "free_steps", "nudged_time",
                "nudged_steps", "free_nonconverged", "wall_time", "cos_1_2", "trace_1_2",
                "cos_2_3", "trace_2_3"):
        assert col in header
    assert len(rows) == 3 and a.metrics.sizes["epoch"] == 2
    assert a.summary["status"] == "finished" and a.summary["epochs_done"] == 2
    # Learning happened, and the same seed gives the same numbers and parameters.
    assert a.metrics.train_cost.values[1] < a.metrics.train_cost.values[0]
    assert _without_timing(rows) == _without_timing(_rows(tmp_path / "b"))
    assert _same_params(ctgep.load_run(tmp_path / "a", "latest").net, ctgep.load_run(tmp_path / "b", "latest").net)
    # Another seed gives another run.
    c = ctgep.train("digits", tmp_path / "c", overrides=SMALL + ["training.seed=1"], **quiet)
    assert not _same_params(a.net, c.net)
    ckpts = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert ckpts == sorted(["best.json", "latest.json",
                            json.loads((tmp_path / "a/checkpoints/best.json").read_text())["params_file"],
                            json.loads((tmp_path / "a/checkpoints/latest.json").read_text())["params_file"]])
    ev = ctgep.evaluate(tmp_path / "a", which="latest", data=small_data)
    assert ev["error"] == pytest.approx(a.metrics.test_error.values[-1])
    # A step compiled for another configuration is refused.
    with pytest.raises(ctgep.UsageError, match="another card"):
        ctgep.train("digits", tmp_path / "d", overrides=SMALL + ["learning.beta=0.25"], step=step, **quiet)


def test_train_returns_the_run_it_wrote(small_data, tmp_path):
    """`train` and `resume` return from memory exactly what `load_run` reads back."""
    quiet = dict(progress=False, log=lambda *a: None, data=small_data)

    def same(run, back):
        assert run.path == back.path and run.card == back.card and run.summary == back.summary
        assert run.checkpoint == back.checkpoint and _same_params(run.net, back.net)
        assert run.metrics.identical(back.metrics)

    run = ctgep.train("digits", tmp_path / "r", overrides=SMALL, **quiet)
    # the final network (`latest`), not the one chosen on the test set
    assert run.checkpoint["tag"] == "latest" and run.checkpoint["epoch"] == run.summary["epochs_done"]
    assert run.summary["best"]["selected_on"] == "test"
    same(run, ctgep.load_run(tmp_path / "r"))
    same(ctgep.resume(tmp_path / "r", epochs=3, **quiet), ctgep.load_run(tmp_path / "r"))
    same(ctgep.resume(tmp_path / "r", **quiet), ctgep.load_run(tmp_path / "r"))  # nothing left to do
    empty = ctgep.train("digits", tmp_path / "e", overrides=SMALL, epochs=0, **quiet)
    assert empty.checkpoint["tag"] == "latest" and empty.metrics.sizes["epoch"] == 0
    same(empty, ctgep.load_run(tmp_path / "e"))


def test_an_injected_dataset_is_used_as_given(tmp_path):
    """Any `ctgep.Dataset` trains: its name goes to the summary, the card's cuts still apply."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (60, 6)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.int32)
    toy = ctgep.Dataset("toy", x[:40], y[:40], x[40:], y[40:], n_classes=2)
    over = ["model.sizes=[6, 8, 2]", "learning.learning_rates=[0.2, 0.1]", "training.epochs=2",
            "training.batch_size=10", "data.max_test=15"]
    run = ctgep.train("digits", tmp_path / "toy", overrides=over, data=toy, progress=False, log=lambda *a: None)
    assert run.summary["dataset"] == "toy" and run.summary["n_train"] == 40 and run.summary["n_test"] == 15
    assert ctgep.evaluate(tmp_path / "toy", which="latest", data=toy)["n"] == 15
    with pytest.raises(ctgep.CardError, match="6 features"):
        ctgep.train("digits", tmp_path / "bad", data=toy, progress=False, log=lambda *a: None)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ctgep.UsageError, match="not both"):
        ctgep.train("digits", tmp_path / "both", overrides=over, data=toy, data_dir=tmp_path)


@pytest.mark.slow
def test_per_layer_learning_rates_reach_their_layers(small_data, tmp_path):
    over = SMALL + ["learning.learning_rates=[0.5, 1e-20, 1e-20]", "training.epochs=1"]
    run = ctgep.train("digits", tmp_path / "r", overrides=over, data=small_data, progress=False,
                      log=lambda *a: None)
    init = ctgep.initial_network(run.card)
    # Layer 1 owns Wf_1 (input → 1), Wb_1 (2 → 1) and b_1; the others barely move.
    assert not np.array_equal(run.net.Wf[0], init.Wf[0]) and not np.array_equal(run.net.Wb[0], init.Wb[0])
    for a, b in [(run.net.Wf[1], init.Wf[1]), (run.net.b[1], init.b[1]), (run.net.Wf[2], init.Wf[2]),
                 (run.net.Wb[1], init.Wb[1]), (run.net.b[2], init.b[2])]:
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_weight_decay_shrinks_weights_not_biases():
    """With sgd, `learning.weight_decay` adds α·wd·W to each step's change of Wf and Wb only."""
    card = ctgep.load_card("digits", overrides=["model.sizes=[64, 24, 10]", "learning.learning_rates=[0.2, 0.1]",
                                                "learning.weight_decay=0.5"])
    net = ctgep.build_network(card, jr.key(0))
    opt = ctgep.build_optimizer(card)
    params = _params(net)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = opt.update(zero, opt.init(params), params)
    np.testing.assert_allclose(updates.Wf[0], -0.2 * 0.5 * net.Wf[0], rtol=1e-6)
    np.testing.assert_allclose(updates.Wb[0], -0.2 * 0.5 * net.Wb[0], rtol=1e-6)
    np.testing.assert_allclose(updates.Wf[1], -0.1 * 0.5 * net.Wf[1], rtol=1e-6)
    assert all(float(jnp.max(jnp.abs(u))) == 0 for u in updates.b)
    with pytest.raises(ctgep.CardError, match="learning.weight_decay"):
        ctgep.load_card("digits", overrides=["learning.weight_decay=-1"])


def test_evaluate_gives_the_error_per_class_and_names_a_class_never_predicted(small_data, tmp_path):
    """`class_error` and `predicted` add up to the error rate; a class that has examples but is
    never predicted (an output unit that never wins, e.g. a dead clipped output) is warned about."""
    import dataclasses

    quiet = dict(progress=False, log=lambda *a: None, data=small_data)
    run = ctgep.train("digits", tmp_path / "a", overrides=SMALL + ["training.epochs=1"], **quiet)
    ev = ctgep.evaluate(tmp_path / "a", data=small_data)
    pred = ctgep.predict(run.net, small_data.x_test, run.card)
    assert pred.shape == (100,) and ev["error"] == np.mean(pred != small_data.y_test)
    assert ev["predicted"] == np.bincount(pred, minlength=10).tolist()
    counts = np.bincount(small_data.y_test, minlength=10)
    assert sum(e * k for e, k in zip(ev["class_error"], counts)) == pytest.approx(ev["error"] * 100)
    # One image twenty times, labelled 0-4 in turn: one class is predicted for all of them.
    same = dataclasses.replace(small_data, x_test=np.repeat(small_data.x_test[:1], 20, axis=0),
                               y_test=np.arange(20) % 5)
    with pytest.warns(UserWarning, match="never predicted on the test set"):
        ev = ctgep.evaluate(tmp_path / "a", data=same)
    c = int(np.argmax(ev["predicted"]))
    assert ev["predicted"][c] == 20
    assert ev["class_error"] == [None if k >= 5 else float(k != c) for k in range(10)]
    assert ev["error"] == np.mean(same.y_test != c)


def test_evaluation_horizon_t_eval(small_data, tmp_path):
    """`phases.t_eval` sets the prediction's free-phase horizon apart from training's `t_free`."""
    quiet = dict(progress=False, log=lambda *a: None)
    over = SMALL + ["training.epochs=1", "phases.stop_at_steady_state=false"]
    run = ctgep.train("digits", tmp_path / "a", overrides=over + ["phases.t_eval=1"], data=small_data, **quiet)
    short = ctgep.evaluate(tmp_path / "a", which="latest", data=small_data)
    assert short["t_free"] == 1 and short["error"] == pytest.approx(run.metrics.test_error.values[-1])
    long = ctgep.evaluate(tmp_path / "a", which="latest", t_free=10, data=small_data)
    card10 = ctgep.load_card(tmp_path / "a" / "card.toml", overrides=["phases.t_eval=0"])
    assert long["error"] == pytest.approx(ctgep.error_rate(run.net, small_data.x_test, small_data.y_test, card10))
    assert long["error"] != short["error"]
    with pytest.raises(ctgep.CardError, match="phases.t_eval"):
        ctgep.load_card("digits", overrides=["phases.t_eval=-1"])


def test_alignment_cosine_and_trace():
    net = ctgep.LayeredNetwork([5, 7, 6, 3], key=jr.key(0), feedback="transpose")
    al = ctgep.alignment(net)
    assert set(al) == {"cos_1_2", "trace_1_2", "cos_2_3", "trace_2_3"}
    assert al["cos_1_2"] == pytest.approx(1.0, abs=1e-6)
    assert al["trace_2_3"] == pytest.approx(float(jnp.trace(net.Wf[2] @ net.Wb[1])), rel=1e-5)
    assert al["trace_2_3"] == pytest.approx(float(jnp.sum(net.Wf[2] ** 2)), rel=1e-5)
    tilted = ctgep.LayeredNetwork([5, 7, 6, 3], key=jr.key(0), feedback=60.0)
    assert ctgep.alignment(tilted)["cos_1_2"] == pytest.approx(0.5, abs=1e-5)
    assert ctgep.alignment(ctgep.LayeredNetwork([5, 3], key=jr.key(0))) == {}


@pytest.mark.slow
def test_resume_at_an_epoch_boundary_matches_one_run(small_data, tmp_path):
    quiet = dict(progress=False, log=lambda *a: None, data=small_data)
    whole = ctgep.train("digits", tmp_path / "whole", overrides=SMALL, **quiet)
    ctgep.train("digits", tmp_path / "part", overrides=SMALL, epochs=1, **quiet)
    resumed = ctgep.resume(tmp_path / "part", epochs=2, **quiet)
    assert _same_params(ctgep.load_run(tmp_path / "whole", "latest").net,
                        ctgep.load_run(tmp_path / "part", "latest").net)
    assert _without_timing(_rows(tmp_path / "whole")) == _without_timing(_rows(tmp_path / "part"))
    assert resumed.card.training.epochs == 2 and whole.summary["status"] == "finished"


def test_existing_run_directory_is_refused_untouched(small_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ctgep.RunDirError, match="already exists"):
        ctgep.train("digits", out, overrides=SMALL, data=small_data, progress=False, log=lambda *a: None)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_divergence_stops_and_keeps_the_last_good_checkpoint(small_data, tmp_path):
    over = SMALL + ["model.activation=tanh", "learning.learning_rates=[1e30, 1e30, 1e30]",
                    "training.checkpoint_every=1", "training.progress_every=1"]
    with pytest.raises(ctgep.TrainingError, match="NaN") as e:
        ctgep.train("digits", tmp_path / "nan", overrides=over, data=small_data, progress=False,
                    log=lambda *a: None)
    assert e.value.exit_code == 1 and not isinstance(e.value, ctgep.RunDirError)
    run = ctgep.load_run(tmp_path / "nan", "latest")
    assert all(np.isfinite(a).all() for a in _leaves(run.net))
    assert not list((tmp_path / "nan" / "checkpoints").glob("*.tmp"))


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "ctgep", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path):
    """Kill a training process mid-epoch with SIGKILL; `ctgep resume` ends where one run ends."""
    card = ctgep.load_card("digits", overrides=[
        "model.sizes=[64, 32, 10]", "learning.learning_rates=[0.2, 0.05]", "phases.t_free=8",
        "phases.t_nudged=3", "training.epochs=2", "training.checkpoint_every=1",
        "training.progress_every=1000", "learning.nudging=random", "data.max_train=600",
        "data.max_test=100"])
    path = tmp_path / "card.toml"
    path.write_text(card.to_toml())
    ref = _cli("train", path, "--out", tmp_path / "ref", "-q", "--set", "training.checkpoint_every=0")
    _kill_mid_epoch(path, tmp_path / "victim", n_batches=30)
    assert ref.wait(120) == 0, ref.stderr.read()
    _resume_and_compare(tmp_path / "ref", tmp_path / "victim")


def _kill_mid_epoch(card_path, out, n_batches):
    """Train `card_path` (checkpointing every batch) in a CLI process and SIGKILL it early in
    its second epoch; the surviving checkpoint is mid-epoch."""
    victim = _cli("train", card_path, "--out", out, "-q")
    side = out / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None:
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            meta = {"epoch": 0, "batch": 0}
        if meta["epoch"] == 1 and meta["batch"] >= 5:
            os.kill(victim.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    assert victim.wait(60) == -signal.SIGKILL, "training ended before it could be killed"
    meta = json.loads(side.read_text())
    assert meta["epoch"] == 1 and 0 < meta["batch"] < n_batches  # the surviving checkpoint is mid-epoch


def _resume_and_compare(ref, victim, while_resuming=lambda: None):
    """`ctgep resume` the killed run; it must end with the parameters and metrics of `ref`."""
    resumed = _cli("resume", victim, "-q")
    while_resuming()
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "resuming" in out
    a, b = ctgep.load_run(ref, "latest"), ctgep.load_run(victim, "latest")
    assert _same_params(a.net, b.net)
    assert _without_timing(_rows(ref)) == _without_timing(_rows(victim))
    leftovers = [p.name for p in (victim / "checkpoints").iterdir()
                 if p.name.endswith(".tmp") or p.name.startswith(".")]
    assert leftovers == []


def test_warm_start_card_key():
    assert ctgep.load_card("digits").phases.warm_start is False
    card = ctgep.load_card("digits", overrides=["phases.warm_start=true"])
    assert card.phases.warm_start is True and "warm_start = true" in card.to_toml()
    for bad in ("maybe", "1"):
        with pytest.raises(ctgep.CardError, match="phases.warm_start"):
            ctgep.load_card("digits", overrides=[f"phases.warm_start={bad}"])


def test_warm_start_saves_free_steps_and_resumes_exactly(tmp_path):
    """Persistent free states: fewer free steps after the first epoch, the same evaluation
    protocol, particles checkpointed with `latest` only, and an exact resume after SIGKILL."""
    card = ctgep.load_card("digits", overrides=[
        "training.epochs=3", "training.checkpoint_every=1", "training.progress_every=1000",
        "data.max_train=300", "data.max_test=100", "phases.warm_start=true"])
    path = tmp_path / "card.toml"
    path.write_text(card.to_toml())
    _kill_mid_epoch(path, tmp_path / "victim", n_batches=15)
    quiet = dict(progress=False, log=lambda *a: None)
    runs = {}

    def reference_runs():  # in this process, while the killed run resumes in another
        for warm in (False, True):
            runs[warm] = ctgep.train(path, tmp_path / f"warm-{warm}", overrides=[
                "training.checkpoint_every=0", f"phases.warm_start={str(warm).lower()}"], **quiet)

    _resume_and_compare(tmp_path / "warm-True", tmp_path / "victim", reference_runs)
    cold, warm = runs[False].metrics, runs[True].metrics
    assert warm.train_cost.values[-1] < warm.train_cost.values[0]  # it trains
    assert np.all(warm.free_steps.values[1:] < cold.free_steps.values[1:])
    assert warm.free_steps.values[0] == cold.free_steps.values[0]  # epoch 1 starts from zeros
    ev = ctgep.evaluate(tmp_path / "warm-True", which="latest")  # from the initial state
    assert ev["error"] == pytest.approx(warm.test_error.values[-1])
    # Only `latest` carries the particles: one row of free states per training example.
    folder = tmp_path / "warm-True" / "checkpoints"
    latest, best = (json.loads((folder / f"{t}.json").read_text()) for t in ("latest", "best"))
    assert "particles_file" not in best and "particles_file" not in json.loads(
        (tmp_path / "warm-False" / "checkpoints" / "latest.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["best.json", "latest.json", best["params_file"], latest["params_file"], latest["particles_file"]])
    particles = np.load(folder / latest["particles_file"])
    assert particles.shape == (300, 512 + 10) and particles.dtype == np.float32
    assert np.all(np.any(particles != 0, axis=1))
    (folder / latest["particles_file"]).write_bytes(b"corrupt")
    with pytest.raises(ctgep.TrainingError, match="sha256"):
        ctgep.resume(tmp_path / "warm-True", **quiet)
    (folder / latest["particles_file"]).unlink()  # as in a clone of a committed run
    with pytest.raises(ctgep.TrainingError, match="particles .* are missing"):
        ctgep.resume(tmp_path / "warm-True", **quiet)
    assert ctgep.evaluate(tmp_path / "warm-True", which="latest")["error"] == ev["error"]
    lines = []  # ... unless the warm starts may begin again from the initial state, with a warning
    more = ctgep.resume(tmp_path / "warm-True", epochs=4, reset_particles=True, progress=False, log=lines.append)
    assert [line for line in lines if "warm starts of" in line and "not identical" in line]
    assert more.metrics.epoch.values.tolist() == [1, 2, 3, 4]
    assert more.metrics.free_steps.values[3] > warm.free_steps.values[2]  # from zeros again
    lines = []  # a particles file that is present is used, reset or not
    ctgep.resume(tmp_path / "warm-True", epochs=5, reset_particles=True, progress=False, log=lines.append)
    assert not [line for line in lines if "warm starts of" in line]


def test_a_silent_output_unit_is_counted_and_reported(tmp_path):
    """An output unit held below −β sits on the clip bound 0 under both nudges: it gets no update
    and its class is never predicted. The epoch row counts it and the log says which unit."""
    card = ctgep.load_card("digits", overrides=["training.epochs=2"])
    net = ctgep.initial_network(card)
    with_a_dead_unit = eqx.tree_at(lambda n: n.b[-1], net, net.b[-1].at[3].set(-100.0))
    lines = []
    run = ctgep.train(card, tmp_path / "dead", net=with_a_dead_unit, progress=False, log=lines.append)
    warnings = [line for line in lines if line.startswith("warning: output unit(s) ")]
    assert len(warnings) == 2 and "of epoch 2:" in warnings[1]
    for line, count in zip(warnings, run.metrics.silent_outputs.values, strict=True):
        units = line.removeprefix("warning: output unit(s) ").split(" sat at")[0].split(", ")
        assert "3" in units and len(units) == count  # early on, another unit may not be lifted yet
    assert float(ctgep.load_run(tmp_path / "dead", "latest").net.b[-1][3]) == -100.0  # no update reached it


def test_a_healthy_run_has_no_silent_output_unit(tmp_path):
    lines = []
    run = ctgep.train("digits", tmp_path / "ok", overrides=["training.epochs=1"], progress=False, log=lines.append)
    assert list(run.metrics.silent_outputs.values) == [0]
    assert not any("lower clip bound" in line for line in lines)


@pytest.mark.slow
def test_shift_augmentation_trains_on_moved_images_and_evaluates_on_plain_ones(tmp_path):
    """`data.shift` draws fresh offsets at every step from the step's key: the run differs from
    a plain one, repeats exactly, and its reported test error is that of the plain test images."""
    quiet = dict(progress=False, log=lambda *a: None)
    over = ["training.epochs=1", "data.max_train=200", "data.max_test=100", "training.progress_every=1000"]
    runs = {s: ctgep.train("digits", tmp_path / f"shift{s}", overrides=over + [f"data.shift={s}"], **quiet)
            for s in (0, 1)}
    again = ctgep.train("digits", tmp_path / "again", overrides=over + ["data.shift=1"], **quiet)
    cost = lambda r: r.metrics.train_cost.values[-1]
    assert cost(runs[1]) != cost(runs[0])
    assert cost(again) == cost(runs[1])
    assert "shift = 1" in (tmp_path / "shift1" / "card.toml").read_text()
    ev = ctgep.evaluate(tmp_path / "shift1", which="latest")
    assert ev["error"] == pytest.approx(runs[1].metrics.test_error.values[-1])


def _one_train_step(card, **flags):
    """The trainable arrays after one compiled train step of `card` on 40 digits (a fixed net,
    key and minibatch), with the step's `flags` (augment, homeostatic)."""
    data = load_dataset("digits")
    x, y = jnp.asarray(data.x_train[:40], jnp.float32), jnp.asarray(data.y_train[:40], jnp.int32)
    step = ctgep.build_training_step(card, 2)
    net = ctgep.build_network(card, jr.key(0))
    out = step.train(net, step.init_optimizer(net), step.zero_stats(), x, y, jnp.arange(40, dtype=jnp.int32),
                     np.int32(0), np.int32(3), jr.key(1), np.float32(card.learning.beta), **flags)
    return jax.tree_util.tree_leaves(eqx.filter(out[0], eqx.is_array))


def test_a_zero_learning_rate_freezes_its_layer():
    """`learning.learning_rates = [0, α]`: the first layer's Wf, Wb and b stay as they were, the
    output layer learns (e.g. to train a readout on fixed features)."""
    card = ctgep.load_card("digits", overrides=["learning.learning_rates=[0, 0.04]"])
    net = ctgep.build_network(card, jr.key(0))
    before = jax.tree_util.tree_leaves(eqx.filter(net, eqx.is_array))
    labels = jax.tree_util.tree_leaves(_param_labels(trainable(net)))
    after = _one_train_step(card)
    assert len(labels) == len(before) == len(after)
    for label, a, b in zip(labels, before, after):
        assert np.array_equal(a, b) == (label == "layer1"), label


def test_shift_epochs_train_the_last_epochs_on_plain_images():
    """`data.shift_epochs = N` turns the shift off after N epochs without a recompile: the shifted
    step with `augment` off is the plain step, to the bit."""
    cards = {s: ctgep.load_card("digits", overrides=[f"data.shift={s}"] + (["data.shift_epochs=1"] if s else []))
             for s in (0, 1)}
    plain, shifted = (_one_train_step(cards[s]) for s in (0, 1))
    off = _one_train_step(cards[1], augment=np.bool_(False))
    assert all(np.array_equal(a, b) for a, b in zip(plain, off))
    assert not all(np.array_equal(a, b) for a, b in zip(plain, shifted))


def test_homeostasis_delay_trains_the_first_epochs_without_homeostasis():
    """`learning.homeostasis_delay = N` switches λ on after N epochs in one compiled step: with
    `homeostatic` off it is the step without homeostasis, to the bit; on, the step with λ."""
    over = ["learning.homeostasis=0.5"]
    cards = {"off": ctgep.load_card("digits"), "on": ctgep.load_card("digits", overrides=over),
             "delayed": ctgep.load_card("digits", overrides=over + ["learning.homeostasis_delay=1"])}
    off, on = (_one_train_step(cards[c]) for c in ("off", "on"))
    before, after = (_one_train_step(cards["delayed"], homeostatic=np.bool_(f)) for f in (False, True))
    assert all(np.array_equal(a, b) for a, b in zip(off, before))
    assert all(np.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(on, after))
    assert not all(np.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(off, on))


def test_homeostasis_delay_needs_homeostasis():
    with pytest.raises(ctgep.CardError, match="homeostasis_delay.*needs learning.homeostasis > 0"):
        ctgep.load_card("digits", overrides=["learning.homeostasis_delay=2"])
    with pytest.raises(ctgep.CardError, match="homeostasis_delay=-1"):
        ctgep.load_card("digits", overrides=["learning.homeostasis=0.1", "learning.homeostasis_delay=-1"])

@pytest.mark.slow
def test_a_run_with_shift_epochs_switches_to_plain_images_after_them(tmp_path):
    """The trainer turns `augment` off at the epoch boundary: epoch 1 matches a run shifted
    throughout, epoch 2 does not."""
    quiet = dict(progress=False, log=lambda *a: None)
    over = ["training.epochs=2", "data.max_train=200", "data.max_test=100", "training.progress_every=1000",
            "data.shift=1"]
    always = ctgep.train("digits", tmp_path / "always", overrides=over, **quiet)
    first = ctgep.train("digits", tmp_path / "first", overrides=over + ["data.shift_epochs=1"], **quiet)
    cost = lambda r: list(r.metrics.train_cost.values)
    assert cost(first)[0] == cost(always)[0]  # epoch 1 shifted in both
    assert cost(first)[1] != cost(always)[1]  # epoch 2 plain in one
    assert "shift_epochs = 1" in (tmp_path / "first" / "card.toml").read_text()


@pytest.mark.slow
def test_a_run_with_homeostasis_delay_switches_homeostasis_on_after_it(tmp_path):
    """The trainer turns homeostasis on at the epoch boundary: epoch 1 matches a run without it,
    epoch 2 does not."""
    quiet = dict(progress=False, log=lambda *a: None)
    over = ["training.epochs=2", "data.max_train=200", "data.max_test=100", "training.progress_every=1000"]
    plain = ctgep.train("digits", tmp_path / "plain", overrides=over, **quiet)
    later = ctgep.train("digits", tmp_path / "later", overrides=over + [
        "learning.homeostasis=0.5", "learning.homeostasis_delay=1"], **quiet)
    cost = lambda r: list(r.metrics.train_cost.values)
    assert cost(later)[0] == cost(plain)[0]  # epoch 1 without homeostasis in both
    assert cost(later)[1] != cost(plain)[1]  # epoch 2 with it in one
    assert "homeostasis_delay = 1" in (tmp_path / "later" / "card.toml").read_text()


# ----------------------------------------------------------------------------------------------
# Run directories damaged by a kill or by hand


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_can_be_resumed_or_restarted(small_data, tmp_path):
    """A kill during the first checkpoint write leaves card.toml and a temporary file: `resume`
    starts the run from its card, and `train --out` may reuse the folder."""
    quiet = dict(progress=False, log=lambda *a: None, data=small_data)
    ref = ctgep.train("digits", tmp_path / "ref", overrides=SMALL, **quiet)
    for name in ("resumed", "restarted"):
        out = tmp_path / name
        (out / "checkpoints").mkdir(parents=True)
        (out / "card.toml").write_text((tmp_path / "ref" / "card.toml").read_text())
        (out / "checkpoints" / ".latest-000000000.eqx.abc123.tmp").write_bytes(b"partial")
    with pytest.raises(ctgep.RunDirError, match="no checkpoint yet"):
        ctgep.load_run(tmp_path / "resumed")
    resumed = ctgep.resume(tmp_path / "resumed", **quiet)
    restarted = ctgep.train("digits", tmp_path / "restarted", overrides=SMALL, **quiet)
    for run in (resumed, restarted):
        assert _same_params(run.net, ref.net)
        assert _without_timing(_rows(run.path)) == _without_timing(_rows(tmp_path / "ref"))
        assert not list((run.path / "checkpoints").glob("*.tmp"))


@pytest.mark.slow
def test_a_truncated_latest_sidecar_resumes_from_best(small_data, tmp_path):
    quiet = dict(progress=False, log=lambda *a: None, data=small_data)
    ref = ctgep.train("digits", tmp_path / "ref", overrides=SMALL, **quiet)
    ctgep.train("digits", tmp_path / "cut", overrides=SMALL, epochs=1, **quiet)
    side = tmp_path / "cut" / "checkpoints" / "latest.json"
    side.write_text(side.read_text()[:40])
    messages = []
    resumed = ctgep.resume(tmp_path / "cut", epochs=2, progress=False, log=messages.append, data=small_data)
    assert any("resuming from the best checkpoint" in m and "truncated" in m for m in messages), messages
    assert _same_params(resumed.net, ref.net)


def test_a_missing_parameter_file_is_named(small_data, tmp_path):
    quiet = dict(progress=False, log=lambda *a: None, data=small_data)
    ctgep.train("digits", tmp_path / "r", overrides=SMALL, epochs=1, **quiet)
    folder = tmp_path / "r" / "checkpoints"
    eqx_file = folder / json.loads((folder / "best.json").read_text())["params_file"]
    if (folder / "latest.json").read_text() and eqx_file.name == json.loads((folder / "latest.json").read_text())["params_file"]:
        pytest.skip("best and latest share a file")
    eqx_file.unlink()
    with pytest.raises(ctgep.RunDirError) as e:
        ctgep.load_run(tmp_path / "r", "best")
    assert eqx_file.name in str(e.value) and "is missing" in str(e.value) and "best.json is" not in str(e.value)
    assert e.value.exit_code == 2


def test_training_figure_log_error_axis_title_and_one_epoch_limits(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from ctgep._experiment import rundir

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    row = {"epoch": 1, "train_error": 0.2, "test_error": 0.03, "cos_1_2": 0.5, "trace_1_2": 2.0}
    rundir.plot_metrics([row], tmp_path / "training.png", title="digits: run-1")
    (fig,) = figures
    top, middle, bottom = fig.axes
    assert top.get_yscale() == "log" and top.get_title() == "digits: run-1"
    assert "$" in middle.get_ylabel() and "$" in bottom.get_ylabel()
    assert bottom.get_xlim() == (0.5, 1.5) and list(bottom.get_xticks()) == [1]
    lo, hi = top.get_ylim()
    assert lo < 3 and 20 < hi <= 100
    assert (tmp_path / "training.png").read_bytes()[:4] == b"\x89PNG"
