"""The netCDF side of `ctgep.record`: CF-style attributes, flat settings, reading back (also files
in the layout before the conventions of docs/model.md), and the error-arrival analysis."""

import json

import numpy as np
import xarray as xr

# long_name and units of every variable and coordinate `record` writes (units None: a string)
_VARIABLE_ATTRS = {
    "state": ("neuron state s(t)", "1"),
    "error": ("error signal (s^beta(t) - s^0)/beta", "1"),
    "residual": ("residual max|mu^beta| = max|ds/dt| over all neurons", "1/tau"),
    "error_magnitude": ("RMS over the layer's neurons of the error signal (s^beta(t) - s^0)/beta", "1"),
    "synapse_norm": ("Frobenius norm of the running synapse increment", "1"),
    "final_state": ("neuron state where the phase ended", "1"),
    "final_residual": ("residual max|mu^beta| where the phase ended", "1/tau"),
    "converged": ("whether the sample settled (residual below tol)", "1"),
    "result": ("how the phase ended for the sample (ctgep.RESULTS code)", "1"),
    "t_stop": ("time at which the phase ended", "tau"),
    "steps": ("solver steps taken by the phase", "1"),
    "phase": ("phase of the EP step: free, then nudged", None),
    "time": ("time since the phase began, on the sampling grid", "tau"),
    "t": ("time since the phase began (NaN past its end)", "tau"),
    "sample": ("index of the example in the batch", "1"),
    "label": ("target class of the example", "1"),
    "prediction": ("class predicted at the free fixed point", "1"),
    "neuron": ("neuron index over the dynamic layers (0 = first unit of layer 1)", "1"),
    "neuron_layer": ("layer of the neuron (1 = first hidden layer, L = output)", "1"),
    "unit": ("index of the neuron within its layer", "1"),
    "layer": ("layer index (1 = first hidden layer, L = output; the input is 0)", "1"),
    "param": ("parameter name: Wf_l, Wb_l or b_l feeding layer l", None),
    "param_layer": ("layer the parameter feeds", "1"),
    "param_rows": ("rows of the parameter (units of the layer it feeds)", "1"),
    "param_columns": ("columns of the parameter (0: a vector)", "1"),
}


def public_param_name(name: str) -> str:
    """The record's name of a parameter: the leaf name `Wf_0` (tuple index 0) becomes `Wf_1`,
    numbered like the layer it feeds; a name without an index is kept."""
    base, _, index = name.rpartition("_")
    return f"{base}_{int(index) + 1}" if base and index.isdigit() else name


def _param_number(name: str) -> int:
    """The layer a (public, 1-based) parameter name feeds, or −1 when it has no index."""
    base, _, index = name.rpartition("_")
    return int(index) if base and index.isdigit() else -1


def _flat(prefix: str, settings: dict) -> dict:
    """`{prefix_key: value}` netCDF can store: numbers, strings, booleans as int8, number
    lists as arrays; None left out; anything else as a JSON string."""
    out = {}
    for k, v in settings.items():
        key = f"{prefix}_{k}"
        if v is None:
            continue
        if isinstance(v, (bool, np.bool_)):
            out[key] = np.int8(bool(v))
        elif isinstance(v, (int, float, str, np.integer, np.floating)):
            out[key] = v
        elif isinstance(v, (list, tuple)) and v and all(isinstance(a, (int, float, np.number)) and not isinstance(a, bool) for a in v):
            out[key] = np.asarray(v)
        else:
            out[key] = json.dumps(v)
    return out


def _unflat(ds, prefix: str) -> dict:
    out = {}
    for k, v in ds.attrs.items():
        if not k.startswith(prefix + "_"):
            continue
        key = k[len(prefix) + 1:]
        if isinstance(v, np.int8):
            v = bool(v)
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        out[key] = v
    return out

def _phase(ds, phase):
    if phase not in ds.phase.values:
        raise ValueError(f"phase={phase!r} must be one of {list(ds.phase.values)}")
    return ds.sel(phase=phase)


def error_arrival_times(ds: xr.Dataset, fraction: float = 0.5, per_sample: bool = False) -> xr.DataArray:
    """Per layer, the time the nudged phase's error magnitude first reaches `fraction` of its final value.

    The magnitude is `error_magnitude` (RMS over the layer's neurons of `(s^β(t) − s⁰)/β`),
    averaged over the recorded samples unless `per_sample`; the crossing is interpolated
    linearly between records. NaN where the final magnitude is zero. Coordinates:
    `final_magnitude` (the magnitude where the phase ended) and `distance` (layers from the output).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must be in (0, 1]")
    nudged = _phase(ds, "nudged")
    keep = np.isfinite(nudged.t.values)
    t = nudged.t.values[keep]
    mag = nudged.error_magnitude.isel(time=np.flatnonzero(keep))
    if not per_sample:
        mag = mag.mean("sample")

    def crossing(m):
        final = m[-1]
        if not np.isfinite(final) or final <= 0:
            return np.nan
        target = fraction * final
        k = int(np.argmax(m >= target))
        if k == 0:
            return float(t[0])
        m0, m1 = m[k - 1], m[k]
        return float(t[k - 1] + (target - m0) / (m1 - m0) * (t[k] - t[k - 1]))

    out = xr.apply_ufunc(crossing, mag, input_core_dims=[["time"]], vectorize=True)
    out = out.assign_coords(
        final_magnitude=mag.isel(time=-1).drop_vars(["time", "t"], errors="ignore"),
        distance=("layer", int(ds.layer.max()) - ds.layer.values),
    )
    out.name = "arrival_time"
    out.attrs.update(long_name=f"time for the error magnitude to reach {fraction:g} of its final value",
                     units="tau")
    out["distance"].attrs.update(long_name="layers between this layer and the output", units="1")
    out["final_magnitude"].attrs.update(long_name="error magnitude where the nudged phase ended", units="1")
    return out


def _version() -> str:
    from .. import __version__

    return __version__


def load_record(path) -> xr.Dataset:
    """Load a dataset written by `record(...).to_netcdf(path)`, fully into memory, with its
    coordinates. A file written before the current conventions (a `layers` dimension beside
    the neurons' `layer`, 0-based parameter names such as `Wf_0`) comes back renamed to them."""
    return upgrade_record(xr.load_dataset(path))


def upgrade_record(ds: xr.Dataset) -> xr.Dataset:
    """An old record's names in the current layout (see the module docstring); a current one as is."""
    if "layers" in ds.dims:
        ds = ds.rename({"layer": "neuron_layer"}).rename({"layers": "layer"})
    if "parameter_numbering" not in ds.attrs and "param" in ds.coords:
        old = [str(n) for n in ds.param.values]
        new = {n: public_param_name(n) for n in old}
        renames = {}
        for n in old:  # increment_Wf_0 and its dims Wf_0_post, Wf_0_pre
            for name in set(ds.variables) | set(ds.dims):
                if name == f"increment_{n}":
                    renames[name] = f"increment_{new[n]}"
                elif name in (f"{n}_post", f"{n}_pre") or name.startswith(f"{n}_d"):
                    renames[name] = new[n] + name[len(n):]
        if renames:  # through temporary names, so that Wf_1 → Wf_2 does not collide with Wf_0 → Wf_1
            ds = ds.rename({k: f"__old_{k}" for k in renames})
            ds = ds.rename({f"__old_{k}": v for k, v in renames.items()})
        ds = ds.assign_coords(param=[new[n] for n in old])
        if "param_layer" in ds.coords:
            ds = ds.assign_coords(param_layer=("param", np.array([_param_number(new[n]) for n in old])))
        ds.attrs["parameter_numbering"] = "1-based: Wf_l, Wb_l and b_l feed layer l (input 0, output L)"
    return ds


def record_settings(ds: xr.Dataset) -> dict:
    """The settings of a record as dicts: `model` (class, sizes, activation, parameter shapes),
    `solver` (its `describe()`), `sampling` and `card` (also from files that stored them as JSON)."""
    out = {}
    for k in ("model", "solver", "sampling"):
        if isinstance(ds.attrs.get(k), str):  # an old file: a JSON string
            out[k] = json.loads(ds.attrs[k])
            continue
        flat = _unflat(ds, k)
        if flat:
            out[k] = flat
    if "model" in out and "param" in ds.coords and "param_rows" in ds.coords:
        out["model"]["parameters"] = {
            str(n): [int(r)] + ([int(c)] if c else [])
            for n, r, c in zip(ds.param.values, ds.param_rows.values, ds.param_columns.values)}
    if "card" in ds.attrs:
        out["card"] = json.loads(ds.attrs["card"])
    return out
