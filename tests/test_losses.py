"""Training objectives: every formula against a hand computation, SWEET's gradient separation, COSEE."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModel

from offramp import losses, schemes
from offramp.backbones import tiny_config
from offramp.losses import (
    beem_kd_loss,
    cosee_beta,
    exit_weights,
    joint_loss,
    kd_loss,
    learned_exit_loss,
    learned_exit_targets,
    osc_loss,
    swm_loss,
    swm_weights,
    weighted_loss,
)
from offramp.model import ExitConfig, MultiExitModel, MultiExitOutput
from offramp.policies import get_policy
from offramp.schemes import (
    CoseeConfig,
    LearnedExitConfig,
    build_scheme,
    get_scheme_config,
    list_schemes,
    parse_options,
)
from offramp.signals import normalized_energy
from offramp.simulate import simulate

# Three exits, two samples, two classes; labels [0, 1].
LOGITS = torch.tensor(
    [
        [[2.0, 0.0], [0.5, 0.0]],
        [[1.0, 1.0], [-1.0, 1.0]],
        [[0.0, 3.0], [0.0, 2.0]],
    ]
)
LABELS = torch.tensor([0, 1])


def ce(z: list[float], y: int) -> float:
    """Cross-entropy by hand."""
    return -z[y] + math.log(sum(math.exp(v) for v in z))


def ce_exit(k: int) -> float:
    return sum(ce(LOGITS[k, n].tolist(), int(LABELS[n])) for n in range(2)) / 2


def softmax(z: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def tiny_model(exits: list[int] | None = None, learned_exit: bool = False, layers: int = 3) -> MultiExitModel:
    torch.manual_seed(0)
    encoder = AutoModel.from_config(tiny_config("bert", num_hidden_layers=layers))
    config = ExitConfig(backbone="tiny", num_labels=2, exits=exits, head="mean", learned_exit=learned_exit)
    return MultiExitModel(config, encoder)


def tiny_batch(size: int = 4, length: int = 7) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 99, (size, length), generator=gen)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0][:size])}


pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.single_thread


# -- joint, weighted, BEEM ---------------------------------------------------------------------


def test_joint_is_the_sum_of_per_exit_batch_mean_ce() -> None:
    expected = sum(ce_exit(k) for k in range(3))
    assert joint_loss(LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_is_the_depth_weighted_average() -> None:
    expected = sum((k + 1) * ce_exit(k) for k in range(3)) / 6
    assert weighted_loss(LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-6)
    # weight_by="layer": exits after layers 2, 4, 12 weigh 2, 4, 12
    w = exit_weights([2, 4, 12], "layer")
    expected = (2 * ce_exit(0) + 4 * ce_exit(1) + 12 * ce_exit(2)) / 18
    assert weighted_loss(LOGITS, LABELS, weights=w).item() == pytest.approx(expected, rel=1e-6)
    assert exit_weights([2, 4, 12]).tolist() == [1.0, 2.0, 3.0]


def test_kd_term_is_kl_teacher_student_times_t_squared() -> None:
    t = 2.0
    got = kd_loss(LOGITS, LOGITS[-1], temperature=t)
    for k in range(3):
        per_sample = []
        for n in range(2):
            p = softmax(LOGITS[-1, n].tolist(), t)
            q = softmax(LOGITS[k, n].tolist(), t)
            per_sample.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)) * t * t)
        assert got[k].item() == pytest.approx(sum(per_sample) / 2, rel=1e-5, abs=1e-7)
    assert got[-1].item() == pytest.approx(0.0, abs=1e-7)  # the teacher's own exit


def test_kd_teacher_is_detached() -> None:
    student = LOGITS.clone().requires_grad_(True)
    teacher = LOGITS[-1].clone().requires_grad_(True)
    kd_loss(student, teacher, temperature=1.5).sum().backward()
    assert teacher.grad is None
    assert torch.count_nonzero(student.grad[0]) > 0
    assert float(student.grad[-1].abs().max()) < 1e-6  # the final exit matches its own teacher


def test_beem_kd_total_by_hand() -> None:
    def kl(p: list[float], q: list[float]) -> float:
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))

    kd = [
        sum(kl(softmax(LOGITS[-1, n].tolist()), softmax(LOGITS[k, n].tolist())) for n in range(2)) / 2
        for k in range(3)
    ]
    expected = sum((k + 1) * (ce_exit(k) + kd[k]) for k in range(3)) / 6
    assert beem_kd_loss(LOGITS, LABELS, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_regression_losses_use_squared_error() -> None:
    z = torch.tensor([[[1.0], [2.0]], [[0.5], [3.0]]])
    y = torch.tensor([1.5, 2.0])
    assert joint_loss(z, y, regression=True).item() == pytest.approx((0.25 + 0) / 2 + (1.0 + 1.0) / 2)
    kd = kd_loss(z, z[-1], regression=True)
    assert kd.tolist() == pytest.approx([(0.25 + 1.0) / 2, 0.0])


# -- COSEE ------------------------------------------------------------------------------------


def test_swm_weights_softmax_of_distance() -> None:
    w = swm_weights(torch.tensor([[0, 2]]), num_exits=3, beta=1.0)
    assert w.shape == (1, 2, 3)
    e = [1.0, math.exp(-1), math.exp(-2)]
    assert w[0, 0].tolist() == pytest.approx([v / sum(e) for v in e])
    assert w[0, 1].tolist() == pytest.approx([v / sum(e) for v in reversed(e)])
    assert swm_weights(torch.tensor([[1]]), 3, 0.0)[0, 0].tolist() == pytest.approx([1 / 3] * 3)
    assert torch.allclose(w.sum(-1), torch.ones(1, 2))


def test_beta_warms_up_linearly_with_the_step() -> None:
    assert cosee_beta(0, 10, 10.0) == 0.0
    assert cosee_beta(5, 10, 10.0) == pytest.approx(5.0)
    assert cosee_beta(10, 10, 10.0) == pytest.approx(10.0)


def test_swm_loss_is_mean_over_thresholds_of_batch_mean_weighted_sum() -> None:
    per_exit = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # [K=3, B=2]
    weights = torch.tensor(
        [
            [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]],
            [[0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3]],
        ]
    )  # [T=2, B=2, K=3]
    by_hand = []
    for t in range(2):
        total = sum(weights[t, n, m] * per_exit[m, n] for n in range(2) for m in range(3))
        by_hand.append(total / 2)
    assert swm_loss(per_exit, weights).item() == pytest.approx(float(sum(by_hand) / 2))


def test_osc_hinge_sign_and_skipped_exits() -> None:
    values = torch.tensor([[0.2, 0.4, 0.9], [0.5, 0.6, 0.1], [0.9, 0.9, 0.9], [0.0, 0.0, 0.0]])
    t, f = True, False
    correct = torch.tensor([[t, t, f], [t, f, t], [t, t, t], [f, t, t]])
    # exit 1: easy {0.2, 0.4} mean 0.3, hard 0.9 -> max(0, 0.3-0.9+0.3) = 0
    # exit 2: easy {0.5, 0.1} mean 0.3, hard 0.6 -> max(0, 0.3-0.6+0.3) = 0 (≈)
    # exit 3: all easy -> no term; exit 4 (last) never counts
    got = osc_loss(values, correct, margin=0.3, confidence_positive=False)
    assert got.item() == pytest.approx(0.0, abs=1e-6)
    got = osc_loss(values, correct, margin=0.5, confidence_positive=False)
    assert got.item() == pytest.approx((0.0 + 0.2) / 3, abs=1e-6)  # exit 2: 0.3 - 0.6 + 0.5
    # confidence-positive (max-prob): max(0, hard - easy + eps)
    got = osc_loss(values, correct, margin=0.3, confidence_positive=True)
    assert got.item() == pytest.approx(((0.9 - 0.3 + 0.3) + (0.6 - 0.3 + 0.3)) / 3, abs=1e-6)


def test_osc_gradient_pushes_easy_down_and_hard_up() -> None:
    values = torch.tensor([[0.5, 0.5], [0.0, 0.0]], requires_grad=True)
    correct = torch.tensor([[True, False], [True, True]])
    osc_loss(values, correct, margin=0.3, confidence_positive=False).backward()
    assert values.grad[0, 0] > 0 and values.grad[0, 1] < 0  # descent lowers easy, raises hard
    assert torch.count_nonzero(values.grad[1]) == 0


def _cosee_scheme(model: MultiExitModel, **options: object) -> schemes.CoseeScheme:
    scheme = build_scheme(CoseeConfig(**options), model)
    scheme.start(seed=0)
    return scheme


def test_cosee_loss_by_hand_with_a_fixed_threshold() -> None:
    model = tiny_model([1, 2, 3])
    scheme = _cosee_scheme(model, alpha=0.5, beta0=4.0, num_thresholds=3)
    tau = float(normalized_energy(LOGITS[1, 0]))  # sample 0 leaves at exit 1, sample 1 runs to the end
    scheme.range = (tau, tau)
    info = {"step": 3, "total_steps": 6}
    loss = scheme.loss(MultiExitOutput(LOGITS), {"labels": LABELS}, info)
    # by hand: exit of each sample = first exit with normalized energy < tau (the last always exits)
    energy = normalized_energy(LOGITS)  # [K, B]
    exit_at = []
    for n in range(2):
        k = next((k for k in range(2) if energy[k, n] < tau), 2)
        exit_at.append(k)
    beta = 4.0 * 3 / 6
    total = 0.0
    for n in range(2):
        w = [math.exp(-beta * abs(m - exit_at[n])) for m in range(3)]
        total += sum(w[m] / sum(w) * ce(LOGITS[m, n].tolist(), int(LABELS[n])) for m in range(3))
    ce_term = total / 2  # the same for all 3 thresholds
    osc = 0.0
    for m in range(2):
        right = (LOGITS[m].argmax(-1) == LABELS).tolist()
        easy = [float(energy[m, n]) for n in range(2) if right[n]]
        hard = [float(energy[m, n]) for n in range(2) if not right[n]]
        if easy and hard:
            osc += max(0.0, sum(easy) / len(easy) - sum(hard) / len(hard) + 0.3)
    assert loss.item() == pytest.approx(ce_term + 0.5 * osc / 2, rel=1e-5)


def test_cosee_simulates_exits_with_the_shared_policy_code(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model([1, 2, 3])
    scheme = _cosee_scheme(model, signal="maxprob", num_thresholds=4)
    seen: dict[str, torch.Tensor] = {}
    real = simulate

    def spy(policy, logits, thresholds, confidence=None, **kw):  # type: ignore[no-untyped-def]
        result = real(policy, logits, thresholds, confidence=confidence, **kw)
        seen["slots"], seen["thresholds"] = result.exit_slot, thresholds
        assert policy.kind == "threshold" and policy.signal == "maxprob"
        return result

    monkeypatch.setattr("offramp.simulate.simulate", spy)
    scheme.loss(MultiExitOutput(LOGITS), {"labels": LABELS}, {"step": 0, "total_steps": 1})
    again = simulate(get_policy("threshold", signal="maxprob"), LOGITS, seen["thresholds"])
    assert torch.equal(seen["slots"], again.exit_slot)
    assert seen["thresholds"].shape == (4,)
    assert bool(((seen["thresholds"] >= 0) & (seen["thresholds"] <= 1)).all())  # (0, 1) in the first epoch


def test_cosee_signal_range_follows_the_previous_epoch_and_round_trips() -> None:
    model = tiny_model([1, 2, 3])
    scheme = _cosee_scheme(model)
    assert scheme.range == (0.0, 1.0)
    out = MultiExitOutput(LOGITS)
    scheme.loss(out, {"labels": LABELS}, {"step": 0, "total_steps": 2})
    scheme.loss(MultiExitOutput(LOGITS * 2), {"labels": LABELS}, {"step": 1, "total_steps": 2})
    assert scheme.range == (0.0, 1.0)  # unchanged until the epoch ends
    state = scheme.state_dict()
    scheme.on_epoch_end()
    internal = torch.cat([normalized_energy(LOGITS[:-1]), normalized_energy(2 * LOGITS[:-1])])
    assert scheme.range == pytest.approx((float(internal.min()), float(internal.max())))
    other = _cosee_scheme(model)
    other.load_state_dict(state)
    other.on_epoch_end()
    assert other.range == scheme.range
    assert torch.equal(other.generator.get_state(), scheme.generator.get_state())


def test_cosee_rejects_regression_and_the_learned_signal() -> None:
    with pytest.raises(ValueError, match="learned"):
        CoseeConfig(signal="learned")
    model = tiny_model([1, 2])
    model.config.problem_type = "regression"
    with pytest.raises(ValueError, match="classification"):
        build_scheme("cosee", model)


# -- learned exit (BERxiT) ----------------------------------------------------------------------


def test_learned_exit_targets_and_losses_by_hand() -> None:
    target = learned_exit_targets(LOGITS, LABELS)
    assert target.tolist() == [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]  # argmax of a tie is class 0
    conf = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]])
    sig = torch.sigmoid(conf).tolist()
    mse = sum((sig[k][n] - float(target[k, n])) ** 2 for k in range(3) for n in range(2)) / 6
    assert learned_exit_loss(conf, LOGITS, LABELS, "mse").item() == pytest.approx(mse, rel=1e-6)
    bce = 0.0
    for k in range(3):
        for n in range(2):
            p = 1 / (1 + math.exp(-float(conf[k, n])))
            t = float(target[k, n])
            bce -= t * math.log(p) + (1 - t) * math.log(1 - p)
    assert learned_exit_loss(conf, LOGITS, LABELS, "bce").item() == pytest.approx(bce / 6, rel=1e-6)
    reg = learned_exit_targets(torch.tensor([[[1.0]], [[3.0]]]), torch.tensor([1.5]), regression=True)
    assert reg.flatten().tolist() == pytest.approx([math.exp(-0.25), math.exp(-2.25)])


@pytest.mark.parametrize("detach", [True, False])
def test_learned_exit_detach_keeps_the_backbone_out(detach: bool) -> None:
    model = tiny_model([1, 2, 3], learned_exit=True)
    scheme = build_scheme("joint", model, LearnedExitConfig(detach=detach))
    batch = tiny_batch()
    with scheme.attached(model):
        out = model(**batch)
        scheme.learned_term(out, batch).backward()
    layer_grads = [p.grad for p in model.backbone.encoder.layer[0].parameters()]
    head_grads = [p.grad for p in model.heads[0].confidence.parameters()]
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in head_grads)
    touched = any(g is not None and torch.count_nonzero(g) > 0 for g in layer_grads)
    assert touched is not detach


def test_learned_exit_needs_confidence_heads() -> None:
    with pytest.raises(ValueError, match="learned_exit=True"):
        build_scheme("joint", tiny_model([1, 2]), LearnedExitConfig())
    assert build_scheme("joint", tiny_model([1, 2], learned_exit=True)).learned == LearnedExitConfig()


# -- SWEET ---------------------------------------------------------------------------------------


def _grads(model: MultiExitModel, names: list[str]) -> list[torch.Tensor | None]:
    params = dict(model.named_parameters())
    return [params[n].grad for n in names]


def test_sweet_separates_gradients_by_segment() -> None:
    model = tiny_model([1, 2, 3])
    scheme = build_scheme("sweet", model)
    assert scheme.forward_kwargs == {"gradient_stop": True}
    batch = tiny_batch()
    names = [n for n, _ in model.named_parameters()]
    segment = {
        0: [n for n in names if n.startswith(("backbone.embeddings", "backbone.encoder.layer.0."))],
        1: [n for n in names if n.startswith("backbone.encoder.layer.1.")],
        2: [n for n in names if n.startswith("backbone.encoder.layer.2.")],
    }
    for k in range(3):
        model.zero_grad(set_to_none=True)
        out = model(**batch, **scheme.forward_kwargs)
        losses.per_exit_task_loss(out.logits[k : k + 1], batch["labels"], False).mean().backward()
        for j in range(3):
            grads = _grads(model, segment[j])
            nonzero = [g is not None and torch.count_nonzero(g) > 0 for g in grads]
            if j == k:  # exit k trains its own segment (all of it but the key bias, whose gradient is 0)
                own = [nz for nz, n in zip(nonzero, segment[j], strict=True) if not n.endswith("key.bias")]
                assert own and all(own), (k, j)
            else:  # below exit k-1: exactly zero; above exit k: never reached
                assert all(g is None or torch.count_nonzero(g) == 0 for g in grads), (k, j)
    # control: without the gradient stop the last exit reaches the first layer
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    losses.per_exit_task_loss(out.logits[2:], batch["labels"], False).mean().backward()
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in _grads(model, segment[0]))


def test_sweet_combines_with_any_base_loss() -> None:
    cfg = get_scheme_config("sweet", base_loss="beem-kd", temperature="2.5")
    assert cfg.base.temperature == 2.5 and cfg.to_dict()["base_loss"] == "beem-kd"
    scheme = cfg.build(tiny_model([1, 3]))
    assert scheme.forward_kwargs["gradient_stop"] is True
    out = MultiExitOutput(LOGITS[:2])
    expected = beem_kd_loss(LOGITS[:2], LABELS, temperature=2.5)
    assert scheme.loss(out, {"labels": LABELS}, {}).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="one-stage"):
        get_scheme_config("sweet", base_loss="two-stage")


# -- two-stage and the registry ---------------------------------------------------------------------


def test_two_stage_parameter_split() -> None:
    model = tiny_model([1, 2, 3], learned_exit=True)
    stages = build_scheme("two-stage", model).stages()
    assert [s.name for s in stages] == ["final-exit", "other-exits"]
    first, second = stages[0].trainable(model), stages[1].trainable(model)
    names = {n for n, _ in model.named_parameters()}
    assert first | second <= names and not first & second
    assert all(n.startswith("heads.0.") or n.startswith("heads.1.") or ".confidence." in n for n in second)
    assert {"heads.2.classifier.weight", "backbone.encoder.layer.0.attention.self.query.weight"} <= first
    assert "heads.2.confidence.weight" in second and "heads.0.classifier.weight" in second
    assert stages[0].select_by == "last"


def test_registry_names_options_and_errors() -> None:
    assert list_schemes() == ["joint", "weighted", "beem-kd", "sweet", "cosee", "two-stage", "multi-model"]
    cfg = get_scheme_config("cosee", **parse_options(["alpha=0.01", "beta0=1", "signal=norm_entropy"]))
    assert (cfg.alpha, cfg.beta0, cfg.signal) == (0.01, 1.0, "norm_entropy")
    assert (cfg.num_thresholds, cfg.margin) == (5, 0.3)
    assert CoseeConfig().alpha == 0.1 and CoseeConfig().beta0 == 10.0
    with pytest.raises(ValueError, match="no option"):
        get_scheme_config("joint", alpha=1)
    with pytest.raises(ValueError, match="unknown training scheme"):
        get_scheme_config("nope")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["alpha"])
    weighted = get_scheme_config("weighted", weight_by="layer").build(tiny_model([1, 3]))
    assert weighted.kwargs["weights"].tolist() == [1.0, 3.0]
