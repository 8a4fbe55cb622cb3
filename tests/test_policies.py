"""Exit policies on hand-made logits: each rule, the registry, errors, and the compaction contract."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from offramp.policies import (
    ExitOutput,
    PolicyError,
    get_policy,
    list_policies,
    policy_from_config,
    regression_policies,
)
from offramp.simulate import simulate

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.single_thread


def two_class(p0: list[list[float]]) -> np.ndarray:
    """Logits [K, N, 2] whose class-0 probabilities are ``p0[k][n]``."""
    p = np.asarray(p0, dtype=np.float64)
    return np.stack([np.log(p), np.log1p(-p)], axis=-1).astype(np.float32)


def first_exit(policy, logits, thresholds=None, **kw) -> np.ndarray:
    return simulate(policy, logits, thresholds, **kw).exit_slot


# --------------------------------------------------------------------------------------------------------
# one test per rule
# --------------------------------------------------------------------------------------------------------


def test_patience_counts_agreements_with_the_previous_exit() -> None:
    # predictions 0, 0, 1, 1, 1, 1 -> counter 0, 1, 0, 1, 2, 3
    logits = two_class([[0.9], [0.8], [0.3], [0.2], [0.4], [0.1]])
    slots = first_exit(get_policy("patience"), logits, [1, 2, 3, 4])
    assert slots[:, 0].tolist() == [1, 4, 5, 5]
    # PABEE's t counts agreements, not identical predictions: t=1 needs two exits in a row
    single = two_class([[0.9], [0.2], [0.8], [0.1]])  # alternating: the counter never leaves 0
    assert first_exit(get_policy("patience", t=1), single)[0, 0] == 3


def test_pcee_resets_its_counter_on_an_unconfident_exit() -> None:
    # confident, unconfident, confident, confident, confident (norm_entropy of 0.99 ~ 0.08, of 0.6 ~ 0.97)
    logits = two_class([[0.99], [0.6], [0.99], [0.99], [0.99]])
    assert first_exit(get_policy("pcee", tau=0.3, t=2), logits)[0, 0] == 3  # without the reset: 2
    assert first_exit(get_policy("pcee", tau=0.3, t=1), logits)[0, 0] == 0
    assert first_exit(get_policy("pcee", tau=0.99, t=2), logits)[0, 0] == 1  # all confident at tau=0.99
    # v1 reads max-prob, confident when >= tau
    assert first_exit(get_policy("pcee-v1", tau=0.95, t=2), logits)[0, 0] == 3


def test_pcee_counter_is_per_threshold() -> None:
    logits = two_class([[0.99], [0.6], [0.99], [0.99], [0.99]])
    slots = first_exit(get_policy("pcee", t=2), logits, [0.3, 0.99, 0.01])
    assert slots[:, 0].tolist() == [3, 1, 4]


def test_beem_sums_only_while_predictions_agree() -> None:
    # max-prob 0.9 everywhere; weights 0.1k: w*C = 0.09, 0.18, 0.27, 0.36
    logits = two_class(
        [
            [0.9, 0.9, 0.9],
            [0.9, 0.1, 0.9],  # sample 1 disagrees at exit 2
            [0.9, 0.1, 0.1],  # sample 2 disagrees at exit 3
            [0.9, 0.1, 0.1],
        ]
    )
    pol = get_policy("beem")
    scores = pol.scores(torch.as_tensor(logits)).numpy()
    np.testing.assert_allclose(scores[:, 0], [0.09, 0.27, 0.54, 0.90], rtol=1e-5)
    np.testing.assert_allclose(scores[:, 1], [0.09, 0.18, 0.45, 0.81], rtol=1e-5)  # restarts at w2*C2, not 0
    np.testing.assert_allclose(scores[:, 2], [0.09, 0.27, 0.27, 0.63], rtol=1e-5)  # restarts at exit 3
    slots = first_exit(pol, logits, [0.3, 0.5])
    assert slots.tolist() == [[2, 2, 3], [2, 3, 3]]


def test_beem_accuracy_weights_and_per_exit_alpha() -> None:
    logits = two_class([[0.9], [0.9], [0.9], [0.9]])
    pol = get_policy("beem-a", weights=[0.5, 0.5, 0.5, 0.5])
    scores = pol.scores(torch.as_tensor(logits))[:, 0].numpy()
    np.testing.assert_allclose(scores, [0.45, 0.9, 1.35, 1.8], rtol=1e-5)
    grid = [[1.0, 0.5, 0.1, 0.0], [2.0, 2.0, 1.0, 0.0], [2.0, 2.0, 2.0, 0.0]]
    assert first_exit(pol, logits, grid)[:, 0].tolist() == [1, 2, 3]
    own = pol.with_threshold([2.0, 0.8, 2.0, 0.0])
    assert first_exit(own, logits)[0, 0] == 1
    with pytest.raises(PolicyError, match="BEEM-A needs weights"):
        first_exit(get_policy("beem-a", alpha=1.0), logits)


def test_budget_exits_everyone_at_exit_k_and_skips_other_heads() -> None:
    logits = two_class([[0.9, 0.6]] * 5)
    pol = get_policy("budget", k=3)
    assert first_exit(pol, logits).tolist() == [[2, 2]]
    state = pol.init_state(2, 5)
    assert [pol.needs_output(state, k) for k in range(5)] == [False, False, True, False, True]
    assert first_exit(get_policy("budget"), logits, [1, 5]).tolist() == [[0, 0], [4, 4]]
    with pytest.raises(PolicyError, match="k=6 out of range"):
        first_exit(pol, logits, 6)


def test_threshold_directions_and_the_last_exit_always_exits() -> None:
    logits = two_class([[0.7], [0.95], [0.6]])
    assert first_exit(get_policy("maxprob", tau=0.9), logits)[0, 0] == 1  # exit when >= tau
    assert first_exit(get_policy("maxprob", tau=1.0), logits)[0, 0] == 2  # never confident: the last exit
    h = -(0.95 * math.log(0.95) + 0.05 * math.log(0.05))
    assert first_exit(get_policy("entropy", tau=h + 1e-3), logits)[0, 0] == 1  # exit when < tau
    assert first_exit(get_policy("entropy", tau=h - 1e-3), logits)[0, 0] == 2
    slots = first_exit(get_policy("maxprob"), logits, [[0.65, 0.99, 1.0], [0.99, 0.99, 0.0]])
    assert slots[:, 0].tolist() == [0, 2]


def test_learned_signal_reads_the_confidence_logits() -> None:
    logits = two_class([[0.6], [0.6], [0.6]])
    conf = np.array([[-2.0], [3.0], [0.0]], dtype=np.float32)
    assert first_exit(get_policy("learned", tau=0.9), logits, confidence=conf)[0, 0] == 1
    with pytest.raises(PolicyError, match="learned-exit"):
        first_exit(get_policy("learned", tau=0.9), logits)


def test_ensemble_averages_the_probabilities_of_the_exits_passed() -> None:
    logits = two_class([[0.9], [0.4], [0.3]])
    plain = simulate(get_policy("maxprob", tau=1.0), logits, return_probs=True)
    ens = simulate(get_policy("maxprob", tau=1.0, ensemble=True), logits, return_probs=True)
    assert plain.prediction[0, 0] == 1 and ens.prediction[0, 0] == 0
    np.testing.assert_allclose(ens.probs[0, 0], [(0.9 + 0.4 + 0.3) / 3, (0.1 + 0.6 + 0.7) / 3], rtol=1e-5)
    two = simulate(get_policy("budget", k=2, ensemble=True), logits, return_probs=True)
    np.testing.assert_allclose(two.probs[0, 0], [0.65, 0.35], rtol=1e-5)
    assert two.exit_slot[0, 0] == 1 and two.prediction[0, 0] == 0


def test_temperatures_scale_the_logits_before_the_signal() -> None:
    logits = two_class([[0.8], [0.8]])
    assert first_exit(get_policy("maxprob", tau=0.9), logits)[0, 0] == 1
    cold = get_policy("maxprob", tau=0.9, temperatures=[0.5, 1.0])  # sharper at exit 1: 0.8 -> ~0.94
    assert first_exit(cold, logits)[0, 0] == 0


def test_regression_supports_budget_and_patience_only() -> None:
    values = np.array([1.0, 1.05, 1.5, 1.52, 1.53], dtype=np.float32).reshape(5, 1, 1)
    res = simulate(get_policy("patience", t=2, tolerance=0.1), values)
    assert res.exit_slot[0, 0] == 4 and res.prediction[0, 0] == pytest.approx(1.53)
    assert simulate(get_policy("budget", k=2), values).prediction[0, 0] == pytest.approx(1.05)
    assert simulate(get_policy("budget", k=2, ensemble=True), values).prediction[0, 0] == pytest.approx(1.025)
    assert set(regression_policies()) == {"budget", "patience"}
    with pytest.raises(PolicyError, match="regression models .* support only: budget, patience"):
        simulate(get_policy("maxprob", tau=0.9), values)


# --------------------------------------------------------------------------------------------------------
# registry, configs, errors
# --------------------------------------------------------------------------------------------------------


def test_registry_lists_and_builds_every_policy() -> None:
    names = list_policies()
    for expected in ("budget", "threshold", "maxprob", "entropy", "norm_entropy", "energy", "norm_energy",
                     "learned", "patience", "pcee", "pcee-v1", "pcee-v2", "beem", "beem-a"):  # fmt: skip
        assert expected in names
    assert list_policies("pcee*") == ["pcee", "pcee-v1", "pcee-v2"]
    assert get_policy("pcee", threshold=0.3, t=3).tau == 0.3  # "threshold" means the axis
    assert get_policy("patience", threshold=2).t == 2
    assert get_policy("entropy").signal == "entropy"


@pytest.mark.parametrize(
    "name, params",
    [("budget", {"k": 2}), ("entropy", {"tau": 0.2, "ensemble": True}), ("patience", {"t": 2}),
     ("pcee-v2", {"tau": 0.7, "t": 3}), ("beem-a", {"alpha": [0.5, 0.6, 0.7], "weights": [0.6, 0.7, 0.8]}),
     ("maxprob", {"tau": 0.9, "temperatures": [1.5, 1.2, 1.0]})],
)  # fmt: skip
def test_config_round_trip(name: str, params: dict) -> None:
    pol = get_policy(name, **params)
    config = json.loads(json.dumps(pol.to_config()))
    again = policy_from_config(config)
    assert again == pol and again.to_config() == pol.to_config()


def test_errors_name_the_bad_value_and_what_was_expected() -> None:
    with pytest.raises(PolicyError, match=r"unknown policy 'pabe'; known policies: budget, threshold"):
        get_policy("pabe")
    with pytest.raises(PolicyError, match=r"tau=1.5 out of range for signal 'maxprob': expected .* \[0, 1\]"):
        get_policy("maxprob", tau=1.5)
    with pytest.raises(PolicyError, match=r"tau=-0.1 out of range for signal 'norm_entropy'"):
        get_policy("pcee", tau=-0.1)
    with pytest.raises(PolicyError, match="t=0 invalid for policy 'patience': expected a whole number >= 1"):
        get_policy("patience", t=0)
    with pytest.raises(PolicyError, match="t=1.5 invalid"):
        get_policy("pcee", tau=0.2, t=1.5)
    with pytest.raises(PolicyError, match="has no parameter 'tua'; expected some of"):
        get_policy("entropy", tua=0.2)
    with pytest.raises(PolicyError, match="unknown signal 'prob'"):
        get_policy("threshold", signal="prob")
    with pytest.raises(PolicyError, match="takes one t for all exits"):
        get_policy("patience", t=[1, 2])
    with pytest.raises(PolicyError, match="needs a value for tau"):
        first_exit(get_policy("entropy"), two_class([[0.9], [0.9]]))
    with pytest.raises(PolicyError, match="3 per-exit alpha values for a model with 2 exits"):
        first_exit(get_policy("beem"), two_class([[0.9], [0.9]]), [[0.1, 0.2, 0.3]])
    with pytest.raises(PolicyError, match="alpha=-1 invalid"):
        get_policy("beem", alpha=-1)
    with pytest.raises(PolicyError, match="t='x' invalid for policy 'pcee': expected a number"):
        get_policy("pcee", t="x")
    with pytest.raises(PolicyError, match="ensemble='yes': expected true or false"):
        get_policy("maxprob", ensemble="yes")
    with pytest.raises(PolicyError, match="weights=\\['a'\\]|weights='a' invalid"):
        get_policy("beem", weights=["a"])


# --------------------------------------------------------------------------------------------------------
# simulation and the compaction contract
# --------------------------------------------------------------------------------------------------------


def random_logits(k: int = 6, n: int = 300, c: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, n, c))
    return (base * np.linspace(0.5, 3, k)[:, None, None] + rng.normal(size=(k, n, c))).astype(np.float32)


@pytest.mark.parametrize("name", ["maxprob", "entropy", "norm_energy", "patience", "pcee", "beem", "budget"])
def test_a_grid_equals_one_threshold_at_a_time(name: str) -> None:
    logits = random_logits()
    pol = get_policy(name)
    grid = pol.grid(torch.as_tensor(logits), size=12)
    both = simulate(pol, logits, grid, return_probs=True)
    assert len(np.unique(both.exit_slot.mean(1))) > 2  # the grid really spreads the exits
    for t, value in enumerate(grid.tolist()):
        one = simulate(pol.with_threshold(value), logits, return_probs=True)
        np.testing.assert_array_equal(one.exit_slot[0], both.exit_slot[t])
        np.testing.assert_array_equal(one.prediction[0], both.prediction[t])
        np.testing.assert_array_equal(one.probs[0], both.probs[t])


@pytest.mark.parametrize("name", ["patience", "pcee", "beem", "maxprob"])
def test_stepping_only_the_rows_still_running_gives_the_same_exits(name: str) -> None:
    """The live runtime steps a shrinking subset with ``state.select``; simulate steps everyone."""
    logits = torch.as_tensor(random_logits(seed=1))
    pol = get_policy(name, ensemble=True)
    value = pol.grid(logits, size=8)[4].item()
    ref = simulate(pol.with_threshold(value), logits)
    pol = pol.with_threshold(value)
    state = pol.init_state(logits.shape[1], logits.shape[0])
    rows = torch.arange(logits.shape[1])
    slot = torch.full((logits.shape[1],), -1)
    pred = torch.full((logits.shape[1],), -1)
    for k in range(logits.shape[0]):
        state, exit_now, prediction = pol.step(state, k, ExitOutput(logits[k, rows]))
        leave = exit_now[0]
        slot[rows[leave]], pred[rows[leave]] = k, prediction[0, leave]
        rows, state = rows[~leave], state.select(~leave)
    np.testing.assert_array_equal(slot.numpy(), ref.exit_slot[0])
    np.testing.assert_array_equal(pred.numpy(), ref.prediction[0])


def test_simulate_returns_arrays_of_the_input_kind() -> None:
    logits = random_logits(k=3, n=5)
    as_np = simulate(get_policy("maxprob"), logits, [0.5, 0.9])
    as_torch = simulate(get_policy("maxprob"), torch.as_tensor(logits), torch.tensor([0.5, 0.9]))
    assert isinstance(as_np.exit_slot, np.ndarray) and isinstance(as_torch.exit_slot, torch.Tensor)
    assert as_np.exit_slot.shape == (2, 5) and as_np.thresholds.shape == (2, 3)
    np.testing.assert_array_equal(as_np.exit_slot, as_torch.exit_slot.numpy())
    np.testing.assert_array_equal(as_np.exit_layers([2, 4, 6]), np.array([2, 4, 6])[as_np.exit_slot])


def test_a_step_reads_maxprob_off_the_cached_softmax_bit_for_bit() -> None:
    from offramp.signals import get_signal

    logits = torch.randn(4, 257, 3, dtype=torch.float64) * 6  # float64 in: the signal works in float32
    signal = get_signal("maxprob")
    for k in range(logits.shape[0]):
        output = ExitOutput(logits[k])
        assert torch.equal(output.signal(signal), signal(logits[k]))
        assert output._probs is not None  # the step's later output.probs reuses this softmax
    entropy = get_signal("entropy")
    assert entropy.from_probs is None
    assert torch.equal(ExitOutput(logits[0]).signal(entropy), entropy(logits[0]))
