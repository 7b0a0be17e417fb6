"""studies/nu_comparison/compare.py in its smallest mode: the dataset's variables and attributes."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # about 30 s: the study's quick mode

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "nu_comparison" / "compare.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("nu_compare", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_mode_writes_dataset(compare, tmp_path):
    import xarray as xr

    argv = ["--quick", "--out", str(tmp_path), "--parts", "small", "--small-sizes", "3,4,3,2",
            "--small-batch", "4", "--solvers", "euler", "--betas", "0.1", "--t-nudged", "2", "--etas", "1e-3",
            "--t-frees", "settled", "--orbit-betas", "0.1", "--bptt-T", "5", "--t-long", "20",
            "--activations", "sigmoid"]
    compare.main(argv)
    ds = xr.open_dataset(tmp_path / "nu_comparison.nc")
    for v in ["small_beta_angle", "small_beta_norm_ratio", "small_tn_angle", "small_eta_angle", "small_orbit_cos",
              "small_orbit_antisym", "small_checks"]:
        assert v in ds, v
    for v in ds.data_vars:
        assert ds[v].attrs.get("long_name") and ds[v].attrs.get("units"), v
    assert set(ds.reference.values) == {"nu", "neg_rbp", "neg_bptt"}
    assert set(ds.rule.values) == {"endpoint", "integrated", "continual"}
    # Settled phases, β 0.1, long nudged phase: every rule points within a few degrees of ν.
    a = ds.small_beta_angle.sel(solver="euler", reference="nu").values
    assert np.all(np.isfinite(a)) and np.all(a < 20), a
    # The orbit statistics are cosines and ratios in [-1, 1] and [0, 1].
    assert np.all(np.abs(ds.small_orbit_cos.values) <= 1 + 1e-12)
    assert np.all((ds.small_orbit_antisym.values >= 0) & (ds.small_orbit_antisym.values <= 1 + 1e-12))
    assert ds.attrs["command"].startswith("python studies/nu_comparison/compare.py")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Training on MNIST" in text and "<!-- mnist-training -->" in text
    assert (tmp_path / "fig_beta.png").exists() and (tmp_path / "fig_orbit.png").exists()
    # Parts run separately are merged with --combine FILE:PREFIX, attributes kept.
    out = tmp_path / "combined"
    compare.main(["--combine", f"{tmp_path / 'nu_comparison.nc'}:small", "--out", str(out)])
    merged = xr.open_dataset(out / "nu_comparison.nc")
    for v in list(merged.data_vars) + list(merged.coords):
        assert merged[v].attrs.get("long_name") and merged[v].attrs.get("units"), v
    assert any(k.startswith("command_") for k in merged.attrs)
