"""`ctgep.record`: trajectories of the free and nudged phases as an xarray.Dataset."""

import json

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import xarray as xr

import ctgep

BETA = 0.5
T = 30.0


@pytest.fixture(scope="module")
def problem():
    net = ctgep.LayeredNetwork((5, 4, 3, 2), key=jr.PRNGKey(0))
    x = jr.uniform(jr.PRNGKey(1), (6, 5))
    y = jax.nn.one_hot(jnp.arange(6) % 2, 2)
    return net, x, y


@pytest.fixture(scope="module")
def euler_record(problem):
    net, x, y = problem
    return ctgep.record(net, x, y, beta=BETA, solver="euler", t_free=T, t_nudged=T, sampling=3, increments="all")


def test_dims_coords_attrs(problem, euler_record):
    net, x, y = problem
    ds = euler_record
    for dim in ("phase", "time", "sample", "neuron", "layer", "param"):
        assert dim in ds.dims
    assert "layers" not in ds.dims and "layers" not in ds.variables  # one name for one thing
    assert list(ds.phase.values) == ["free", "nudged"]
    assert ds.sizes["neuron"] == 4 + 3 + 2
    assert list(ds.neuron_layer.values) == [1] * 4 + [2] * 3 + [3] * 2
    assert list(ds.layer.values) == [1, 2, 3]
    assert list(ds.unit.values) == [0, 1, 2, 3, 0, 1, 2, 0, 1]
    assert ds.neuron_layer.dims == ("neuron",)
    assert ds.t.dims == ("phase", "time")
    assert ds.state.dims == ("phase", "time", "sample", "neuron")
    assert ds.error.dims == ("phase", "time", "sample", "neuron")
    assert ds.residual.dims == ("phase", "time", "sample")
    assert ds.error_magnitude.dims == ("phase", "time", "sample", "layer")
    # Parameters are numbered like the layer they feed (1-based, as the layers are)
    assert list(ds.param.values) == ["Wf_1", "Wf_2", "Wf_3", "Wb_1", "Wb_2", "b_1", "b_2", "b_3"]
    assert list(ds.param_layer.values) == [1, 2, 3, 1, 2, 1, 2, 3]
    assert ds["increment_Wf_2"].dims == ("phase", "time", "Wf_2_post", "Wf_2_pre")
    assert ds["increment_b_3"].dims == ("phase", "time", "b_3_post")
    assert list(ds.label.values) == [0, 1, 0, 1, 0, 1]
    assert ds.attrs["beta"] == BETA and ds.attrs["t_free"] == T
    # lists are arrays, not JSON strings
    assert isinstance(ds.attrs["model_sizes"], np.ndarray) and ds.attrs["model_sizes"].tolist() == [5, 4, 3, 2]
    model = ctgep.record_settings(ds)["model"]
    assert model["class"] == "LayeredNetwork" and model["sizes"] == [5, 4, 3, 2]
    assert model["parameters"]["Wf_1"] == [4, 5] and model["parameters"]["b_3"] == [2]
    assert ctgep.record_settings(ds)["solver"] == {"kind": "euler", "dt": 0.5, "clip": True, "precondition": False,
                                                  "alternate": False, "backtrack": False}
    assert ctgep.record_settings(ds)["sampling"] == {"kind": "steps", "every": 3}
    # nudged-only quantities are NaN in the free phase; the error starts at zero
    assert np.all(np.isnan(ds.error.sel(phase="free")))
    assert np.all(ds.error.sel(phase="nudged").isel(time=0) == 0)
    # the nudged phase stops at steady state: the output settles toward the target
    res = ds.residual.sel(phase="nudged").dropna("time")
    assert float(res.isel(time=-1).max()) < 1e-4 < float(res.isel(time=1).max())


def test_every_nth_step_count(problem, euler_record):
    ds = euler_record
    for phase in ("free", "nudged"):
        steps = int(ds.steps.sel(phase=phase))
        t = ds.t.sel(phase=phase).values
        n = int(np.sum(np.isfinite(t)))
        # the initial state, every 3rd step, and the final state when it is not on the stride
        assert n == 1 + steps // 3 + (steps % 3 != 0)
        assert np.isclose(t[n - 1], steps * 0.5)
        assert np.allclose(t[: 1 + steps // 3], 1.5 * np.arange(1 + steps // 3))
    assert ds.sizes["time"] == 1 + int(ds.steps.max()) // 3 + (int(ds.steps.max()) % 3 != 0)


def _flat(state):
    return np.concatenate([np.asarray(a) for a in state], axis=-1)


@pytest.mark.parametrize("solver", ["euler", pytest.param("tsit5", marks=pytest.mark.slow)])
def test_final_states_match_phases(problem, euler_record, solver):
    net, x, y = problem
    if solver == "euler":
        ds = euler_record
    else:
        ds = ctgep.record(net, x, y, beta=BETA, solver=solver, t_free=T, t_nudged=T, sampling="steps")
    # record runs ep_step's phases: both stop at ‖μ^β‖∞ < tol·min(1, β)
    step = ctgep.ep_step(net, x, y, beta=BETA, solver=solver, t_free=T, t_nudged=T, rule="integrated")
    free, nudged = step.free, step.nudged[0]
    np.testing.assert_allclose(ds.final_state.sel(phase="free"), _flat(free.state), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds.final_state.sel(phase="nudged"), _flat(nudged.state), rtol=0, atol=1e-6)
    assert float(ds.t_stop.sel(phase="nudged")) == pytest.approx(float(nudged.t_stop[0]))
    assert int(ds.steps.sel(phase="free")) == int(free.steps[0])
    # step sampling ends on the final state
    for phase, res in (("free", free), ("nudged", nudged)):
        last = ds.state.sel(phase=phase).dropna("time", how="all").isel(time=-1)
        np.testing.assert_allclose(last, _flat(res.state), rtol=0, atol=1e-6)
    err = ds.error.sel(phase="nudged").dropna("time", how="all").isel(time=-1)
    np.testing.assert_allclose(err, (_flat(nudged.state) - _flat(free.state)) / BETA, rtol=1e-5, atol=1e-5)


def test_preconditioned_euler_record_matches_phases(problem):
    """The recorder steps as the phases do, with each unit's preconditioned step."""
    net, x, y = problem
    solver = ctgep.Euler(dt=1.0, precondition=True)
    ds = ctgep.record(net, x, y, beta=BETA, solver=solver, t_free=T, t_nudged=T, sampling="steps")
    free = ctgep.free_phase(net, x, solver=solver, t_max=T)
    nudged = ctgep.nudged_phase(net, x, y, free, beta=BETA, solver=solver, t_max=T)
    np.testing.assert_allclose(ds.final_state.sel(phase="nudged"), _flat(nudged.state), rtol=0, atol=1e-6)
    assert int(ds.steps.sel(phase="nudged")) == int(nudged.steps[0])
    assert ctgep.record_settings(ds)["solver"]["precondition"] is True


def test_alternating_euler_record_matches_phases_and_integrated_rule(problem):
    """With the layers updated in turn, the recorder takes the phases' steps, and its running
    increment adds up each half-step's synapse terms exactly as the integrated rule does."""
    net, x, y = problem
    solver = ctgep.Euler(dt=1.0, precondition=True, alternate=True)
    ds = ctgep.record(net, x, y, beta=BETA, solver=solver, t_free=T, t_nudged=T, sampling="steps",
                      increments="all")
    free = ctgep.free_phase(net, x, solver=solver, t_max=T)
    nudged = ctgep.nudged_phase(net, x, y, free, beta=BETA, solver=solver, t_max=T)
    np.testing.assert_allclose(ds.final_state.sel(phase="nudged"), _flat(nudged.state), rtol=0, atol=1e-6)
    assert int(ds.steps.sel(phase="nudged")) == int(nudged.steps[0])
    assert ctgep.record_settings(ds)["solver"]["alternate"] is True
    update = ctgep.ep_update(net, x, y, beta=BETA, rule="integrated", solver=solver, t_free=T, t_nudged=T)
    for name, u in zip(ds.param.values, jax.tree_util.tree_leaves(update)):
        inc = ds[f"increment_{name}"].sel(phase="nudged").dropna("time", how="all").isel(time=-1)
        np.testing.assert_allclose(inc, np.asarray(u), rtol=1e-5, atol=1e-6)


def test_running_increment_matches_integrated_rule(problem, euler_record):
    net, x, y = problem
    ds = euler_record
    update = ctgep.ep_update(net, x, y, beta=BETA, rule="integrated", solver="euler", t_free=T, t_nudged=T)
    flat = jax.tree_util.tree_leaves(update)
    names = list(ds.param.values)
    for name, u in zip(names, flat):
        inc = ds[f"increment_{name}"].sel(phase="nudged").dropna("time", how="all").isel(time=-1)
        np.testing.assert_allclose(inc, np.asarray(u), rtol=1e-5, atol=1e-6)
        norm = ds.synapse_norm.sel(phase="nudged", param=name).dropna("time").isel(time=-1)
        assert float(norm) == pytest.approx(float(jnp.linalg.norm(u)), rel=1e-5, abs=1e-7)
    # it starts at zero and grows along the phase
    assert np.all(ds.synapse_norm.sel(phase="nudged").isel(time=0) == 0)


def test_netcdf_round_trip(tmp_path, euler_record):
    path = tmp_path / "rec.nc"
    euler_record.to_netcdf(path)
    back = ctgep.load_record(path)
    xr.testing.assert_identical(back, euler_record)
    assert back.converged.dtype == bool and back.phase.values.tolist() == ["free", "nudged"]
    assert back.neuron_layer.dims == ("neuron",) and back.t.dims == ("phase", "time")


def test_netcdf_round_trip_h5netcdf(tmp_path, euler_record):
    pytest.importorskip("h5py")
    path = tmp_path / "rec.nc"
    euler_record.to_netcdf(path, engine="h5netcdf")
    xr.testing.assert_identical(ctgep.load_record(path), euler_record)


def test_monitors_subset_and_grid(problem):
    net, x, y = problem
    grid = np.arange(0.0, 12.5, 1.0)
    ds = ctgep.record(
        net, x, y, beta=BETA, solver="euler", t_free=T, t_nudged=10.0, layers=[-1, 1],
        neurons={1: [3, 0], -1: 1}, samples=[4, 1], sampling=grid, increments=["Wf_3"],
    )
    assert list(ds.sample.values) == [4, 1]
    assert list(ds.neuron_layer.values) == [1, 1, 3] and list(ds.unit.values) == [3, 0, 0]
    assert list(ds.neuron.values) == [3, 0, 7]  # global index over layers of widths 4, 3, 2
    np.testing.assert_array_equal(ds.time.values, grid)
    assert [v for v in ds.data_vars if v.startswith("increment_")] == ["increment_Wf_3"]
    # the nudged phase's horizon (10) ends before the grid: NaN there, as is t
    t_nudged = ds.t.sel(phase="nudged").values
    assert np.all(np.isnan(t_nudged[grid > 10])) and np.allclose(t_nudged[grid <= 10], grid[grid <= 10])
    full = ctgep.record(net, x, y, beta=BETA, solver="euler", t_free=T, t_nudged=10.0, sampling=grid)
    sub = full.state.sel(sample=[4, 1], neuron=[3, 0, 7])
    np.testing.assert_array_equal(ds.state.values, sub.values)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layers=[4]), "layers: unknown layer index 4"),
        (dict(layers=[0]), "layers: unknown layer index 0"),
        (dict(neurons=[5]), "neurons: index 5 out of range for layer 1"),
        (dict(samples=[6]), "samples: index 6 out of range"),
        (dict(sampling=0), "sampling=0"),
        (dict(sampling="every"), "sampling='every'"),
        (dict(sampling=[0.0, 2.0, 1.0]), "sampling: a time grid"),
        (dict(sampling=[0.0, 0.1]), "finer than the solver.s step dt=0.5"),
        (dict(increments=["W"]), "increments: unknown parameter 'W'"),
        (dict(layers=[1], neurons={2: 1}), "neurons: layer 2 is not among"),
        (dict(beta=0.0), "beta=0.0"),
    ],
)
def test_bad_monitors(problem, kwargs, match):
    net, x, y = problem
    kw = dict(beta=BETA, solver="euler", t_free=T, t_nudged=T) | kwargs
    with pytest.raises(ValueError, match=match):
        ctgep.record(net, x, y, **kw)


def test_arrival_times_and_figures(tmp_path, euler_record):
    ds = euler_record
    arrival = ctgep.error_arrival_times(ds)
    assert arrival.dims == ("layer",)
    # the nudge acts on the output layer: the error reaches it before it reaches layer 1
    assert 0 < float(arrival.sel(layer=3)) < float(arrival.sel(layer=1))
    # by definition the mean magnitude at the arrival time is half its final value
    mag = ds.error_magnitude.sel(phase="nudged").mean("sample").dropna("time")
    t = ds.t.sel(phase="nudged").dropna("time").values
    for l in (1, 2, 3):
        m = mag.sel(layer=l).values
        assert np.interp(float(arrival.sel(layer=l)), t, m) == pytest.approx(0.5 * m[-1], rel=1e-6)
    assert ctgep.error_arrival_times(ds, per_sample=True).dims == ("sample", "layer")
    paths = ctgep.save_figures(ds, tmp_path)
    assert set(paths) == {"error_signal", "state_heatmaps", "error_heatmaps", "phase_portrait"}
    for p in paths.values():
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="neurons: 99 was not recorded"):
        ctgep.plot_phase_portrait(ds, [0, 99])


def test_cli_record(tmp_path, capsys):
    from ctgep._cli import main

    out = tmp_path / "rec"
    argv = ["record", "--sizes", "64,6,5,10", "--samples", "3", "--solver", "euler", "--every", "4",
            "--t-free", "20", "--t-nudged", "20", "--increments", "b_2", "--out", str(out)]
    assert main(argv) == 0
    ds = ctgep.load_record(out / "record.nc")
    assert ds.sizes["sample"] == 3 and ds.sizes["neuron"] == 6 + 5 + 10
    assert "increment_b_2" in ds and ctgep.record_settings(ds)["solver"]["kind"] == "euler"
    assert ctgep.record_settings(ds)["sampling"] == {"kind": "steps", "every": 4}
    for name in ("error_signal", "state_heatmaps", "error_heatmaps", "phase_portrait"):
        assert (out / f"{name}.png").is_file()
    assert "error arrival time" in capsys.readouterr().out
    assert main(argv[:-2] + ["--layers", "7", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctgep: error: layers: unknown layer index 7") and "\n" not in err
    assert main(["record", "--sizes", "64,6,5,10", "--precondition", "--out", str(tmp_path / "r2")]) == 2
    assert "--precondition scales the Euler step" in capsys.readouterr().err
    assert main(["record", "--sizes", "64,6,5,10", "--alternate", "--out", str(tmp_path / "r3")]) == 2
    assert "--alternate orders the Euler step's layer updates" in capsys.readouterr().err


def _numeric(var):
    return np.issubdtype(var.dtype, np.number) or var.dtype == bool


def test_netcdf_attributes_follow_cf_conventions(tmp_path, problem):
    """Every variable and coordinate of record.nc, as read from disk, has a long_name, and every
    numeric one CF-style units; times are in membrane time constants ("tau")."""
    net, x, y = problem
    ds = ctgep.record(net, x, y, beta=BETA, solver="euler", t_free=T, t_nudged=T, increments=["Wf_1"])
    ds.to_netcdf(tmp_path / "record.nc")
    with xr.open_dataset(tmp_path / "record.nc") as disk:
        missing = [n for n, v in disk.variables.items()
                   if not v.attrs.get("long_name") or (_numeric(v) and not v.attrs.get("units"))]
        assert not missing, f"variables without long_name/units: {missing}"
        for name in ("time", "t", "t_stop"):
            assert disk[name].attrs["units"] == "tau", name
        assert disk.residual.attrs["units"] == "1/tau"
        assert disk.result.attrs["flag_meanings"].split() == [r.name for r in ctgep.RESULTS]
        assert list(disk.result.attrs["flag_values"]) == [int(r) for r in ctgep.RESULTS]
        # settings as attributes netCDF holds natively: numbers and arrays, not JSON strings
        assert list(disk.attrs["model_sizes"]) == [5, 4, 3, 2]
        assert disk.attrs["solver_kind"] == "euler" and disk.attrs["sampling_kind"] == "grid"
        assert "model" not in disk.attrs and "solver" not in disk.attrs
    assert ctgep.record_settings(ctgep.load_record(tmp_path / "record.nc"))["solver"]["clip"] is True
    arrival = ctgep.error_arrival_times(ds)
    assert arrival.attrs["units"] == "tau" and arrival.distance.attrs["units"] == "1"


def _old_layout(ds):
    """`ds` as ctgep wrote it before: a `layers` dim beside the neurons' `layer`, 0-based
    parameter names and JSON attributes."""
    old = ds.drop_vars(["result", "param_rows", "param_columns"]).rename({"layer": "layers"}).rename(
        {"neuron_layer": "layer"})
    renames = {}
    for n in ds.param.values:
        base, _, i = str(n).rpartition("_")
        o = f"{base}_{int(i) - 1}"
        if f"increment_{n}" in ds:
            renames[f"increment_{n}"] = f"increment_{o}"
            renames.update({d: d.replace(str(n), o, 1) for d in ds[f"increment_{n}"].dims[2:]})
    old = old.rename({k: f"tmp_{k}" for k in renames}).rename({f"tmp_{k}": v for k, v in renames.items()})
    old = old.assign_coords(param=[f"{str(n).rpartition('_')[0]}_{int(str(n).rpartition('_')[2]) - 1}"
                                   for n in ds.param.values])
    settings = ctgep.record_settings(ds)
    old.attrs = {k: v for k, v in ds.attrs.items()
                 if not k.startswith(("model_", "solver_", "sampling_")) and k != "parameter_numbering"}
    old.attrs.update(model=json.dumps(settings["model"]), solver=json.dumps(settings["solver"]),
                     sampling=json.dumps(settings["sampling"]))
    return old


def test_load_record_reads_the_old_layout(tmp_path, euler_record):
    old = _old_layout(euler_record)
    assert "layers" in old.dims and "increment_Wf_0" in old and "Wf_0_post" in old.dims
    old.to_netcdf(tmp_path / "old.nc")
    back = ctgep.load_record(tmp_path / "old.nc")
    assert "layers" not in back.dims and list(back.layer.values) == [1, 2, 3]
    assert list(back.neuron_layer.values) == list(euler_record.neuron_layer.values)
    assert list(back.param.values) == list(euler_record.param.values)
    for n in euler_record.param.values:
        np.testing.assert_array_equal(back[f"increment_{n}"].values, euler_record[f"increment_{n}"].values)
        assert back[f"increment_{n}"].dims == euler_record[f"increment_{n}"].dims
    assert ctgep.record_settings(back)["solver"] == ctgep.record_settings(euler_record)["solver"]
    assert float(ctgep.error_arrival_times(back).sel(layer=3)) == float(ctgep.error_arrival_times(euler_record).sel(layer=3))


def test_figures_log_axis_labelled_colourbars_and_subsampled_layers():
    """The error signal is on a log axis (layers differ by orders of magnitude); heatmaps have a
    labelled colour bar per layer and show at most `max_neurons` units of a 512-unit layer."""
    net = ctgep.LayeredNetwork((5, 512, 2), key=jr.PRNGKey(0))
    x = jr.uniform(jr.PRNGKey(1), (2, 5))
    y = jax.nn.one_hot(jnp.arange(2) % 2, 2)
    ds = ctgep.record(net, x, y, beta=BETA, solver="euler", t_free=5.0, t_nudged=5.0)
    fig = ctgep.plot_error_signal(ds)
    assert fig.axes[0].get_yscale() == "log" and "$" in fig.axes[0].get_ylabel()
    fig = ctgep.plot_state_heatmaps(ds, variable="error")
    panels = [ax for ax in fig.axes if ax.collections]
    rows = [ax.collections[0].get_array().reshape(-1, ds.sizes["time"]).shape[0]
            if ax.collections[0].get_array().ndim == 1 else ax.collections[0].get_array().shape[0]
            for ax in panels[:1]]
    assert rows == [64] and "64 of 512" in panels[0].get_ylabel()
    colourbars = [ax for ax in fig.axes if ax not in panels or not ax.get_xlabel()]
    assert sum(bool(ax.get_ylabel()) for ax in fig.axes) >= 4  # 2 panels + 2 labelled colour bars
    assert any("error" in ax.get_ylabel() for ax in colourbars)


def test_cli_record_checks_options_and_output_before_computing(tmp_path, capsys):
    from ctgep._cli import main

    base = ["record", "--sizes", "64,6,10", "--solver", "euler", "--samples", "2"]
    (tmp_path / "file").write_text("")
    for extra, words in ((["--dt", "0"], "--dt=0.0"), (["--dt", "-1"], "--dt=-1.0"),
                         (["--t-free", "0"], "--t-free"), (["--tol", "-1"], "--tol"),
                         (["--neurons", "0"], "--neurons"), (["--every", "0"], "--every")):
        assert main(base + extra + ["--out", str(tmp_path / "r")]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("ctgep: error:") and words in err and "\n" not in err
    assert main(base + ["--out", str(tmp_path / "file" / "r")]) == 2  # a file where a folder must be
    assert "is a file" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_record_source_names_the_network_with_an_adaptive_solver(tmp_path, capsys):
    from ctgep._cli import main

    out = tmp_path / "rec"
    argv = ["record", "--sizes", "64,6,10", "--samples", "2", "--solver", "tsit5", "--t-free", "5",
            "--t-nudged", "5", "--layers=-1,1", "--no-figures", "--out", str(out)]
    assert main(argv) == 0
    ds = ctgep.load_record(out / "record.nc")
    assert ds.attrs["source"].startswith("untrained 64-6-10 network"), ds.attrs["source"]
    assert "Euler" not in capsys.readouterr().out
