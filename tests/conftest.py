import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import ctgep

# Matplotlib's font cache, found before the fixture below moves HOME (else every process of a
# test would rebuild it).
_MPLCONFIGDIR = os.environ.get("MPLCONFIGDIR")
if not _MPLCONFIGDIR:
    import matplotlib

    _MPLCONFIGDIR = matplotlib.get_cachedir()

# One persistent compilation cache for the whole run, shared by the xdist workers and by the
# CLI subprocesses the tests start (they inherit the environment): the tests compile the same
# train and phase steps again and again, and reading them back halves the suite's time. A
# folder of this run's own, removed at the end by the process that made it. A size bound turns
# on JAX's file lock (the `filelock` package), so that no process reads an entry another is
# still writing.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ  # workers and subprocesses inherit it
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ctgep-tests-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 2**30))
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_compilation_cache_max_size", int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_machine_data(monkeypatch, tmp_path_factory):
    """Tests never read the machine's dataset folders or the user's caches: HOME, the XDG cache
    and ctgep's search path point into a fresh temporary folder. ($CTGEP_DATA_DIR stays: the
    tests that use real MNIST read it on purpose; the others clear it themselves.)"""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("CTGEP_DATA_PATH", str(home / "datasets"))
    monkeypatch.setenv("MPLCONFIGDIR", _MPLCONFIGDIR)


@pytest.fixture
def x64():
    """Float64 for numerical checks, scoped to one test (training stays float32)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def small_problem(x64):
    """A 3-layer smooth network in float64 and a batch of inputs and one-hot targets."""
    net = ctgep.LayeredNetwork((8, 12, 10, 4), "sigmoid", key=jr.PRNGKey(0), dtype=jnp.float64)
    x = jr.uniform(jr.PRNGKey(1), (5, 8), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(5) % 4, 4, dtype=jnp.float64)
    return net, x, y


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled programs after each test module: one process compiles a few thousand
    over the suite, and holding them all made XLA's compiler crash late in a full run."""
    yield
    jax.clear_caches()
