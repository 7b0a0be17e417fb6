"""Data parallelism (issue 24): a minibatch sharded over devices computes the single-device step,
runs on several devices match one device's, their checkpoints resume on one device, and two
`jax.distributed` processes train one run directory.

Several devices need `XLA_FLAGS=--xla_force_host_platform_device_count=N` before JAX starts, so
every check that uses them runs in a fresh Python or `ctgep` process (the CPU backend's fake
devices; on a GPU host the same code takes the real ones).
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from ctgep._cli import main
from ctgep._errors import CardError
from ctgep._experiment.cards import load_card

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = "--set training.epochs=1 --set data.max_train=40 --set data.max_test=20"


def _env(devices=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "JAX_"))}
    env["JAX_PLATFORMS"] = "cpu"
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _python(code, devices, cwd, timeout=600):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=_env(devices),
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_devices_key_is_validated_with_the_card(capsys):
    assert load_card("digits", ["training.devices=all"]).training.devices == "all"
    assert load_card("digits", ["training.devices=4"]).training.devices == "4"
    for bad, says in (("0", "whole number"), ("two", "whole number"), ("3", "not a multiple")):
        with pytest.raises(CardError, match=says):
            load_card("digits", [f"training.devices={bad}"])
    assert main(["train", "--devices", "3", "--out", "unused"]) == 2  # before JAX, one line
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "training.batch_size=20 is not a multiple of training.devices=3" in err


def test_one_process_unless_asked_and_bad_process_options_are_usage_errors(monkeypatch):
    from ctgep._errors import UsageError
    from ctgep._experiment.parallel import CLUSTER_SIZE, ENV, initialize_distributed

    for var in (*ENV.values(), *CLUSTER_SIZE):
        monkeypatch.delenv(var, raising=False)
    assert initialize_distributed() is False
    with pytest.raises(UsageError, match=r"process id \(5\) in \[0, 2\)"):
        initialize_distributed("localhost:1", 2, 5)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(UsageError, match="must be integers"):
        initialize_distributed()


def test_an_absent_coordinator_is_a_one_line_error_after_the_timeout(monkeypatch, tmp_path, capsys):
    from ctgep._cli import main
    from ctgep._experiment.parallel import CLUSTER_SIZE, ENV

    for var in (*ENV.values(), *CLUSTER_SIZE):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    code = main(["train", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1",
                 "--coordinator-timeout", "0.5", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and time.monotonic() - t0 < 10
    assert "\n" not in err and f"no coordinator answered at 127.0.0.1:{port} within 0.5 s" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("family, bind, address", [
    (socket.AF_INET, "127.0.0.1", "127.0.0.1:{}"), (socket.AF_INET, "127.0.0.1", "localhost:{}"),
    pytest.param(socket.AF_INET6, "::1", "[::1]:{}", marks=pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6"))])
def test_the_coordinator_probe_reads_host_and_port(family, bind, address):
    from ctgep._errors import UsageError
    from ctgep._experiment.parallel import _wait_for_coordinator

    with socket.socket(family) as s:
        s.bind((bind, 0))
        s.listen()
        _wait_for_coordinator(address.format(s.getsockname()[1]), 2.0)  # returns at once
    for bad in ("host", "[::1]", "h:99999"):
        with pytest.raises(UsageError, match="HOST:PORT with a port in 1 … 65535"):
            _wait_for_coordinator(bad, 0.5)


STEP = """
import json
import jax, jax.numpy as jnp, numpy as np
from ctgep import CardError, build_training_step, load_card, load_card_data
from ctgep._experiment.build import build_network, permutation, run_keys

assert jax.device_count() == 4
card = load_card("digits", ["phases.warm_start=true", "data.shift=1", "model.sizes=[64,64,10]"])
data = load_card_data(card)
net = build_network(card, run_keys(card)[0])
_, perm_key, step_key = run_keys(card)
perm = permutation(perm_key, np.int32(0), len(data.y_train))
order = np.asarray(perm)
out = {}
for devices in ("1", "4"):
    step = build_training_step(card.with_overrides([f"training.devices={devices}"]), 10)
    host = step.mesh is not None  # a sharded step takes the training set from the host
    x = np.asarray(data.x_train, np.float32) if host else jnp.asarray(data.x_train, jnp.float32)
    y = np.asarray(data.y_train, np.int32) if host else jnp.asarray(data.y_train, jnp.int32)
    n, o, s = net, step.init_optimizer(net), step.zero_stats()
    particles = np.zeros((len(data.y_train), sum(card.model.sizes[1:])), np.float32)
    for b in range(3):
        idx = order[b * 20:(b + 1) * 20]
        n, o, s, rows = step.train(n, o, s, x, y, perm, np.int32(b), np.int32(b), step_key,
                                   np.float32(card.learning.beta), particles[idx], np.bool_(True))
        particles[idx] = np.asarray(rows)
    out[devices] = (jax.tree_util.tree_leaves((n, o)), s, particles)
    if host:
        sharding = n.Wf[0].sharding
        assert sharding.is_fully_replicated and len(sharding.device_set) == 4, sharding
one, four = out["1"], out["4"]
try:
    build_training_step(card.with_overrides(["training.devices=all", "training.batch_size=10"]), 1)
    error = None
except CardError as e:
    error = str(e)
print(json.dumps({
    "params": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(one[0], four[0])),
    "scale": max(float(np.max(np.abs(np.asarray(a)))) for a in one[0]),
    "stats": {k: [float(np.max(one[1][k])), float(np.max(np.abs(one[1][k] - four[1][k])))] for k in one[1]},
    "particles": float(np.max(np.abs(one[2] - four[2]))),
    "error": error}))
"""


def test_a_sharded_step_computes_the_single_device_step(tmp_path):
    """Three steps (warm starts, shifted images) on 4 devices against 1: the EP update's batch
    mean and the phases' stopping test become global under jit, so only float rounding differs."""
    r = _python(STEP, 4, tmp_path)
    assert r["params"] <= 1e-5 * max(r["scale"], 1.0), r
    assert r["particles"] <= 1e-5, r
    for k, (value, diff) in r["stats"].items():
        assert diff <= 1e-5 * max(abs(value), 1.0), (k, value, diff)
    assert r["stats"]["examples"][0] == 60 and r["stats"]["errors"][0] > 0
    assert r["error"] and "batch_size=10 is not a multiple of the 4 devices" in r["error"]


RUNS = """
import json
import numpy as np
import ctgep
from ctgep._cli import main

# A constant learning rate: the cosine schedule depends on the number of epochs, which `half` changes.
card = ctgep.load_card("digits", ["phases.warm_start=true", "data.max_train=200", "data.max_test=100",
                                  "training.epochs=2", "learning.schedule=constant"])
two = ctgep.train(card.with_overrides(["training.devices=2"]), "two", progress=False, log=lambda *a: None)
one = ctgep.train(card, "one", progress=False, log=lambda *a: None)
half = ctgep.train(card.with_overrides(["training.devices=2"]), "half", epochs=1, progress=False,
                   log=lambda *a: None)
assert main(["resume", "half", "--epochs", "2", "--devices", "1", "-q"]) == 0
assert ctgep.load_card("half/card.toml").training.devices == "2"  # the card is not rewritten
resumed = ctgep.load_run("half")
rows = lambda run: {k: run.metrics[k].values.tolist() for k in ("train_error", "train_cost", "test_error", "free_steps")}
leaves = lambda run: [np.asarray(a) for a in (run.net.Wf + run.net.Wb + run.net.b)]
print(json.dumps({"two": rows(two), "one": rows(one), "resumed": rows(resumed),
                  "params": max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(one), leaves(two))),
                  "params_resumed": max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(one), leaves(resumed)))}))
"""


def test_two_devices_train_like_one_and_their_checkpoints_resume_on_one(tmp_path):
    """Two epochs on 2 fake devices against 1 (warm starts: the particles travel with their
    examples); and 1 epoch on 2 devices resumed for the second on 1 device (`--devices 1`)."""
    r = _python(RUNS, 2, tmp_path)
    for run in ("two", "resumed"):
        for k, ones in r["one"].items():
            assert r[run][k] == pytest.approx(ones, rel=1e-4, abs=1e-4), (run, k, r[run][k], ones)
    assert r["params"] < 1e-4 and r["params_resumed"] < 1e-4, r


def _readme_launch():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Several devices and hosts"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(tmp_path, script, timeout=300):
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def _two_processes_train(tmp_path):
    block = _readme_launch()
    assert "JAX_PROCESS_ID=0" in block and "JAX_PROCESS_ID=1" in block
    script = (block.replace("localhost:8476", f"localhost:{_free_port()}")
              .replace("ctgep train", f"ctgep train {TINY}"))
    return script, _launch(tmp_path, script)


def test_two_processes_train_one_run_directory_and_resume_it(tmp_path):
    """The README's launch, on tiny settings: two `jax.distributed` processes on localhost (one
    CPU device each, a mesh of 2) train one epoch of the digits card into one run directory,
    written by process 0 alone; the same two processes then resume it for a second epoch."""
    script, r = _two_processes_train(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    (run,) = (tmp_path / "runs").iterdir()
    metrics = (run / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 2 and metrics[1].startswith("1,")
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.suffix == ".json") == [
        "best.json", "latest.json"]
    assert r.stdout.count(f"done: {run.relative_to(tmp_path)}") == 1  # process 0 reports for both
    script = re.sub(r"localhost:\d+", f"localhost:{_free_port()}", script)
    _launch(tmp_path, re.sub(r"ctgep train .*?--out ([\w/.-]+)", r"ctgep resume \1 --epochs 2", script))
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
