"""Linear readouts of each layer's free fixed point (`ctgep.linear_readout`, `ctgep readout`)."""

import json

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import xarray as xr

import ctgep
from ctgep._cli import main

from test_cli import TINY, _one_line_error


def _separable(n, key, n_in=8, classes=3):
    """Gaussian inputs whose label is the argmax of one fixed linear map of them."""
    x = jr.normal(key, (n, n_in))
    return np.asarray(x, np.float32), np.asarray((x @ jr.normal(jr.PRNGKey(99), (n_in, classes))).argmax(1))


@pytest.fixture(scope="module")
def net():
    return ctgep.LayeredNetwork((8, 16, 3), "hard_sigmoid", key=jr.PRNGKey(0))


def _readout(net, x_tr, y_tr, x_te, y_te):
    return ctgep.linear_readout(net, x_tr, y_tr, x_te, y_te, solver=ctgep.Euler(dt=0.5), t_max=20.0,
                                batch_size=128)


def test_readout_measures_what_a_layer_carries_about_the_label(net):
    """Labels linear in the input: the input's readout finds them though the untrained network
    does not; labels independent of the input: no readout does better than chance."""
    x_tr, y_tr = _separable(300, jr.PRNGKey(1))
    x_te, y_te = _separable(200, jr.PRNGKey(2))
    ds = _readout(net, x_tr, y_tr, x_te, y_te)
    assert list(ds["layer"].values) == [0, 1, 2] and list(ds["width"].values) == [8, 16, 3]
    assert float(ds["readout_test_error"].sel(layer=0)) < 0.05
    assert float(ds["network_test_error"]) > 0.3  # untrained: its own output is no classifier
    # the network's own error is the argmax of the output layer's free fixed point
    free = ctgep.free_phase(net, jnp.asarray(x_te), solver=ctgep.Euler(dt=0.5), t_max=20.0,
                            stop_at_steady_state=False)
    assert float(ds["network_test_error"]) == pytest.approx(np.mean(np.asarray(free.state[-1]).argmax(1) != y_te))

    y_random = np.asarray(jr.permutation(jr.PRNGKey(3), y_te))  # the test labels shuffled
    shuffled = _readout(net, x_tr, y_tr, x_te, y_random)
    assert float(shuffled["readout_test_error"].sel(layer=0)) > 0.45


@pytest.mark.parametrize("case, message", [
    ("one_class", "single class"),
    ("shape", "one label each"),
    ("empty", "no test examples"),
])
def test_bad_input_is_one_clear_error(net, case, message):
    x, y = _separable(40, jr.PRNGKey(1))
    args = {"one_class": (x, np.zeros(40, int), x, y), "shape": (x, y[:-1], x, y),
            "empty": (x, y, x[:0], y[:0])}[case]
    with pytest.raises(ctgep.UsageError, match=message):
        _readout(net, *args)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("readout") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out), "-q"]) == 0
    return out


def test_cli_writes_netcdf_and_figure_and_agrees_with_evaluate(run_dir, tmp_path, capsys):
    out = tmp_path / "ro"
    assert main(["readout", str(run_dir), "--n-train", "150", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "network's own output" in captured.out and "input" in captured.out
    assert "fitting the readout of layer 2 (10 features)" in captured.err  # progress on stderr
    with xr.open_dataset(out / "readout.nc") as ds:
        ds = ds.load()
    assert ds.attrs["n_train"] == 150 and ds.attrs["n_test"] == 60  # TINY keeps 60 test examples
    assert list(ds["width"].values) == [64, 16, 10]
    assert set(ds["C"].values) <= {0.01, 0.1, 1.0}
    assert (out / "readout.png").stat().st_size > 0
    # the readout relaxes as `ctgep evaluate` predicts
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert float(ds["network_test_error"]) == pytest.approx(evaluated["error"])


@pytest.mark.parametrize("extra, fragment", [
    (["--n-train", "1"], "--n-train=1 must be at least 2"),
    (["--n-train", "100000"], "exceeds the"),
    (["--n-test", "0"], "--n-test=0 must be at least 1"),
    (["--C", "0.1", "0"], "--C=0.0 must be positive"),
])
def test_cli_bad_input_gives_one_line(run_dir, tmp_path, capsys, extra, fragment):
    rc = main(["readout", str(run_dir), *extra, "--out", str(tmp_path / "ro"), "--quiet"])
    assert fragment in _one_line_error(capsys, rc)
    assert not (tmp_path / "ro").exists()


def test_cli_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    rc = main(["readout", str(tmp_path), "--out", str(tmp_path / "ro"), "--quiet"])
    _one_line_error(capsys, rc)
