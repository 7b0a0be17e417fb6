"""Model cards: built-in and repository cards, TOML round trip, --set overrides, validation."""

import dataclasses
import pathlib

import pytest

import ctgep
from ctgep._experiment.cards import Card, CardError, builtin_cards, load_card
from ctgep import build_solver

MODELS = pathlib.Path(__file__).resolve().parent.parent / "models"


def test_builtin_digits_card_is_the_default_and_matches_models_copy():
    assert "digits" in builtin_cards()
    card = load_card()
    assert card.name == "digits" and card.data.dataset == "digits"
    assert card.model.sizes[0] == 64 and card.model.sizes[-1] == 10
    assert load_card(MODELS / "digits.toml") == card


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.toml")), ids=lambda p: p.stem)
def test_repository_cards_load_and_round_trip(path, tmp_path):
    card = load_card(path)
    assert len(card.learning.learning_rates) == len(card.model.sizes) - 1
    copy = tmp_path / "card.toml"
    copy.write_text(card.to_toml())
    assert load_card(copy) == card


def test_paper_cards_follow_appendix_c():
    two = load_card(MODELS / "mnist_784-512-512-10.toml")
    three = load_card(MODELS / "mnist_784-512-512-512-10.toml")
    assert two.model.sizes == [784, 512, 512, 10] and three.model.sizes == [784, 512, 512, 512, 10]
    for c in (two, three):
        assert c.training.batch_size == 20 and c.model.activation == "hard_sigmoid"
        assert c.model.feedback == "random" and c.phases.solver == "euler"
        assert c.learning.rule == "endpoint" and c.learning.beta == 1.0


# The 784-512-512-10 runs made before the card's 80 epochs without mid-epoch checkpoints, and
# those made before its warm starts.
OLD = ["training.checkpoint_every=1000"]
WARM40 = OLD + ["training.epochs=40"]
COLD = OLD + ["phases.warm_start=false"]
GAUSS_SEIDEL = ["phases.dt=1.0", "phases.precondition=true", "phases.alternate=true", "phases.t_free=15",
                "phases.t_nudged=5"]
# The shifted-images runs: 20 free steps, predictions after 60, images shifted, 100 epochs.
SHIFTED = GAUSS_SEIDEL + ["phases.t_free=20", "phases.t_eval=60", "data.shift=1", "training.epochs=100"]
# The rules compared (issue 21): centered β 0.5, lower rates, predictions after 60 steps, 40 epochs.
CENTERED = GAUSS_SEIDEL + ["phases.t_eval=60", "learning.nudging=centered", "learning.beta=0.5",
                           "learning.learning_rates=[0.1,0.05,0.04]", "training.epochs=40"]


@pytest.mark.parametrize("card, overrides, run", [
    ("mnist_784-512-512-10.toml", [], "784-512-512-10_endpoint_warm80"),
    ("mnist_784-512-512-10.toml", ["training.seed=1"], "784-512-512-10_endpoint_warm80_seed1"),
    ("mnist_784-512-512-10.toml", WARM40, "784-512-512-10_endpoint_warm"),
    ("mnist_784-512-512-10.toml", WARM40 + ["training.seed=1"], "784-512-512-10_endpoint_warm_seed1"),
    ("mnist_784-512-512-10.toml", COLD + ["phases.stop_at_steady_state=true", "training.epochs=38"],
     "784-512-512-10_endpoint_tuned"),
    ("mnist_784-512-512-10.toml", COLD + ["training.epochs=80"], "784-512-512-10_endpoint_long"),
    ("mnist_784-512-512-10.toml", COLD + ["phases.stop_at_steady_state=true",
                                          "learning.learning_rates=[0.4,0.1,0.01]", "training.epochs=50"],
     "784-512-512-10_endpoint"),
    ("mnist_784-512-512-10_integrated.toml", [], "784-512-512-10_integrated"),
    ("mnist_784-512-512-512-10.toml", [], "784-512-512-512-10_endpoint_tuned"),
    ("mnist_784-512-512-512-10.toml", ["phases.warm_start=true", "phases.stop_at_steady_state=false",
                                       "training.epochs=35", "training.checkpoint_every=0"],
     "784-512-512-512-10_endpoint_warm"),
    ("mnist_784-512-512-512-10.toml", ["learning.learning_rates=[0.4,0.1,0.04,0.01]"],
     "784-512-512-512-10_endpoint"),
    ("mnist_784-512-512-512-10_centered.toml", [], "784-512-512-512-10_centered"),
    ("mnist_784-512-512-10.toml", ["phases.dt=1.0", "phases.precondition=true"], "784-512-512-10_jacobi"),
    ("mnist_784-512-512-512-10.toml", ["phases.warm_start=true", "phases.stop_at_steady_state=false",
                                       "training.epochs=35", "training.checkpoint_every=0",
                                       "phases.dt=1.0", "phases.precondition=true"],
     "784-512-512-512-10_jacobi"),
    ("mnist_784-512-512-10.toml", GAUSS_SEIDEL, "784-512-512-10_gauss_seidel"),
    ("mnist_784-512-512-10.toml", GAUSS_SEIDEL + ["training.seed=1"], "784-512-512-10_gauss_seidel_seed1"),
    ("mnist_784-512-512-10.toml", CENTERED + ["learning.rule=integrated"], "784-512-512-10_integrated_centered"),
    ("mnist_784-512-512-10.toml", CENTERED + ["training.seed=1"], "784-512-512-10_endpoint_centered_seed1"),
    ("mnist_784-512-512-10.toml", CENTERED + ["learning.rule=integrated", "training.seed=1"],
     "784-512-512-10_integrated_centered_seed1"),
    ("mnist_784-512-512-10.toml", CENTERED + ["learning.rule=integrated", "learning.homeostasis=0.01"],
     "784-512-512-10_integrated_centered_homeostasis"),
    ("mnist_784-512-512-10.toml", CENTERED + ["learning.homeostasis=0.01"], "784-512-512-10_endpoint_centered_homeostasis"),
    ("mnist_784-512-512-10.toml", SHIFTED, "784-512-512-10_gauss_seidel_shift1"),
    ("mnist_784-512-512-10.toml", SHIFTED + ["training.seed=1"], "784-512-512-10_gauss_seidel_shift1_seed1"),
    ("mnist_784-512-512-10.toml", SHIFTED + ["data.shift_epochs=70"], "784-512-512-10_gauss_seidel_shift1_plain30"),
    ("mnist_784-512-512-512-10.toml", ["phases.warm_start=true", "phases.stop_at_steady_state=false",
                                       "training.checkpoint_every=0", "phases.dt=1.0", "phases.precondition=true",
                                       "phases.alternate=true", "phases.t_free=30", "phases.t_nudged=10",
                                       "phases.t_eval=120", "data.shift=1", "training.epochs=50"],
     "784-512-512-512-10_gauss_seidel_shift1"),
    ("mnist_cnn_fast.toml", ["training.epochs=20"], "cnn_fast"),
    ("mnist_cnn_fast.toml", ["training.epochs=20", "learning.homeostasis=0.01", "data.shift=1"],
     "cnn_homeostasis_shift1"),
    ("mnist_cnn_fast.toml", ["training.epochs=3", "learning.homeostasis=0.01", "data.shift=1", "phases.t_free=40",
                             "learning.learning_rates=[0.03,0.015,0.006]",
                             "training.init=studies/mnist/cnn_homeostasis_shift1"], "cnn_homeostasis_shift1_tune"),
    ("fashion-mnist_cnn.toml", ["training.epochs=20", "learning.homeostasis=0.01"], "fashion_mnist/cnn_homeostasis"),
    ("fashion-mnist_cnn.toml", ["training.epochs=20", "learning.homeostasis=0", "learning.learning_rates=[0.03,0.05,0.02]"],
     "fashion_mnist/cnn_l1small"),
    ("fashion-mnist_cnn.toml", ["training.epochs=4", "learning.homeostasis=0", "learning.learning_rates=[0.03,0.05,0.02]",
                                "training.init=studies/fashion_mnist/cnn_l1small"], "fashion_mnist/cnn_l1small_anneal"),
    ("fashion-mnist_784-512-512-10.toml", ["phases.t_nudged=5", "learning.homeostasis=0", "training.epochs=30"],
     "fashion_mnist/784-512-512-10_gauss_seidel"),
    ("fashion-mnist_784-512-512-10.toml", ["learning.homeostasis=0", "training.epochs=60"],
     "fashion_mnist/784-512-512-10_gauss_seidel_60"),
    ("fashion-mnist_784-512-512-10.toml", [], "fashion_mnist/784-512-512-10_homeostasis"),
])
def test_committed_runs_were_made_by_the_committed_cards(card, overrides, run):
    """`ctgep train models/<card> [--set …]`, as the README writes it, reproduces the run's settings."""
    run_dir = MODELS.parent / "studies" / (run if "/" in run else f"mnist/{run}")
    if not (run_dir / "card.toml").exists():
        pytest.skip(f"{run_dir} is not committed")
    used = load_card(run_dir / "card.toml")
    used = dataclasses.replace(used, data=dataclasses.replace(used.data, data_dir=""))
    assert used == load_card(MODELS / card, overrides=overrides)
    assert load_card(MODELS / "fashion-mnist_784-512-512-10.toml").data.dataset == "fashion-mnist"


def test_overrides_are_coerced_to_the_field_types():
    card = load_card("digits", overrides=[
        "learning.beta=0.25", "training.epochs=3", "model.sizes=[64, 32, 10]",
        "phases.solver=tsit5", "data.download=false", "phases.t_free=7",
        "learning.learning_rates=[1, 0.5]", "model.feedback=45",
    ])
    assert card.learning.beta == 0.25 and card.training.epochs == 3
    assert card.model.sizes == [64, 32, 10] and card.phases.solver == "tsit5"
    assert card.data.download is False and card.phases.t_free == 7.0
    assert isinstance(card.phases.t_free, float)
    assert card.learning.learning_rates == [1.0, 0.5] and card.model.feedback == "45"


def test_training_init_names_a_run_and_a_checkpoint():
    from ctgep._experiment.cards import init_checkpoint

    assert init_checkpoint("") == ("", "latest")
    assert init_checkpoint("runs/a") == ("runs/a", "latest")
    assert init_checkpoint("runs/a:best") == ("runs/a", "best")
    assert init_checkpoint("C:/runs/a:latest") == ("C:/runs/a", "latest")
    assert load_card("digits", overrides=["training.init=studies/mnist/x:best"]).training.init == "studies/mnist/x:best"


@pytest.mark.parametrize("item, words", [
    ("learning.betta=1", ["learning.betta", "beta"]),
    ("nosuch.key=1", ["nosuch"]),
    ("beta=1", ["section.key"]),
    ("learning.beta", ["section.key=value"]),
    ("training.epochs=2.5", ["training.epochs", "integer"]),
    ("data.download=maybe", ["data.download"]),
])
def test_bad_overrides_name_the_key(item, words):
    with pytest.raises(CardError) as e:
        load_card("digits", overrides=[item])
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("item, key", [
    ("learning.beta=0", "learning.beta"),
    ("learning.beta=-1", "learning.beta"),
    ("learning.learning_rates=[0.1, -0.1]", "learning.learning_rates[1]"),
    ("learning.learning_rates=[0, 0]", "every layer frozen"),
    ("learning.learning_rates=[0.1]", "learning.learning_rates"),
    ("phases.dt=-0.5", "phases.dt"),
    ("phases.solver=rk4", "phases.solver"),
    ("model.activation=relu6", "model.activation"),
    ("data.dataset=cifar", "data.dataset"),
    ("training.batch_size=0", "training.batch_size"),
    ("learning.rule=magic", "learning.rule"),
    ("learning.beta=1", "learning.nudging"),  # the digits card nudges both ways: −β kills the leak
    ("data.shift=-1", "data.shift"),
    ("data.shift=4", "data.shift"),  # half the side of the 8×8 digits
    ("data.shift_epochs=3", "data.shift_epochs"),  # without a shift
    ("data.shift_epochs=-1", "data.shift_epochs"),
    ("training.init=:best", "training.init"),
])
def test_invalid_values_are_rejected(item, key):
    with pytest.raises(CardError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_card("digits", overrides=[item])


def test_preconditioning_needs_the_euler_solver():
    card = load_card("digits", overrides=["phases.precondition=true", "phases.dt=1"])
    assert card.phases.precondition is True
    assert build_solver(card) == ctgep.Euler(dt=1.0, precondition=True)  # what `ctgep train` relaxes with
    with pytest.raises(CardError, match="phases.precondition"):
        load_card("digits", overrides=["phases.precondition=true", "phases.solver=tsit5"])


def test_alternating_layers_needs_the_euler_solver():
    card = load_card("digits", overrides=["phases.alternate=true", "phases.precondition=true", "phases.dt=1"])
    assert build_solver(card) == ctgep.Euler(dt=1.0, precondition=True, alternate=True)
    with pytest.raises(CardError, match="phases.alternate"):
        load_card("digits", overrides=["phases.alternate=true", "phases.solver=dopri5"])


def test_backtracking_needs_the_euler_solver():
    card = load_card("digits", overrides=["phases.backtrack=true", "phases.alternate=true",
                                          "phases.precondition=true", "phases.dt=1"])
    assert build_solver(card) == ctgep.Euler(dt=1.0, precondition=True, alternate=True, backtrack=True)
    with pytest.raises(CardError, match="phases.backtrack"):
        load_card("digits", overrides=["phases.backtrack=true", "phases.solver=tsit5"])


def test_missing_malformed_and_unknown_key_cards(tmp_path):
    with pytest.raises(CardError, match="not found"):
        load_card(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nsizes = [1, 2]\n")
    with pytest.raises(CardError, match="not valid TOML"):
        load_card(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[model]\nsize = [64, 10]\n")
    with pytest.raises(CardError, match="model.size"):
        load_card(typo)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[training]\nepochs = "ten"\n')
    with pytest.raises(CardError, match="training.epochs"):
        load_card(wrong)


def test_defaults_fill_missing_tables(tmp_path):
    minimal = tmp_path / "minimal.toml"
    minimal.write_text('name = "tiny"\n[model]\nsizes = [64, 20, 10]\n[learning]\nlearning_rates = [0.1, 0.1]\n')
    card = load_card(minimal)
    assert card.name == "tiny" and card.training == Card().training
    assert ctgep.load_card is load_card
