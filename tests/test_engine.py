"""The live runtime against simulate(): identical exits and predictions, for every policy, at batch 1 and 32.

MiniLM-L6 with quickly fitted heads (``minilm_sst2`` in conftest.py) runs the first SST-2 dev sentences
live (batch 1: the first 32; batch 32: the first 112, i.e. three full batches and a partial one, so
compaction and padding trimming happen) and the same sentences' cached per-exit logits go through
``simulate``. Thresholds are taken from each policy's own grid where the exits spread across layers,
and only where the simulated result does not change under a tiny nudge of the threshold: the live
batches differ from the cached ones in composition and padding, so logits may differ in the last
float bits, and a threshold sitting exactly on a signal value would flip on that noise, not on a bug.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from offramp.data import default_glue_dir
from offramp.engine import EarlyExitEngine
from offramp.policies import PolicyError, get_policy
from offramp.simulate import simulate

GLUE_DIR = default_glue_dir()  # ../shared/data/glue beside the repository
N_BATCH1 = 32
pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.single_thread
N_BATCH32 = 112

# (registry name, fixed parameters); "accuracy" weights are filled in from the cached exits.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("budget", {}),
    ("maxprob", {}),
    ("entropy", {}),
    ("norm_entropy", {}),
    ("energy", {}),
    ("norm_energy", {}),
    ("learned", {}),
    ("patience", {}),
    ("pcee", {"t": 2}),
    ("pcee-v1", {"t": 2}),
    ("pcee-v2", {"t": 2}),
    ("beem", {}),
    ("beem-a", {}),
    ("maxprob", {"ensemble": True}),
    ("patience", {"ensemble": True}),
    ("entropy", {"temperatures": [1.7, 1.4, 1.2, 1.0, 0.9, 0.8]}),
]
IDS = [n + ("+" + "+".join(p) if p and n != "beem-a" else "") for n, p in CASES]


@pytest.fixture(scope="module")
def dev_cache(minilm_sst2: Any) -> dict[str, Any]:
    from offramp.data import load_glue
    from offramp.evaluate import collect_exit_outputs

    dev = load_glue("sst2", GLUE_DIR, "dev").select(range(N_BATCH32))
    outputs = collect_exit_outputs(minilm_sst2, dev, batch_size=64)
    return {"data": dev, "outputs": outputs, "engine": EarlyExitEngine(minilm_sst2)}


def build_policy(name: str, params: dict[str, Any], outputs: Any) -> Any:
    policy = get_policy(name, **params)
    return policy.fit(outputs.logits, outputs.labels)  # BEEM-A: weights = each exit's accuracy


def stable_thresholds(policy: Any, logits: np.ndarray, conf: np.ndarray, count: int) -> list[Any]:
    """Grid values that spread the exits and whose simulated exits survive a tiny nudge (see module doc)."""
    num_exits = logits.shape[0]
    grid = policy.grid(torch.as_tensor(logits), torch.as_tensor(conf), size=96).numpy()
    base = simulate(policy, logits, grid, conf)
    stable = np.ones(len(grid), dtype=bool)
    if not policy.integer_axis:
        for sign in (-1, 1):
            nudged = grid + sign * (1e-4 * np.maximum(np.abs(grid), 1.0))
            if policy.kind == "beem":
                nudged = np.maximum(nudged, 0.0)
            else:
                lo, hi = policy._signal.bounds or (-np.inf, np.inf)
                nudged = np.clip(nudged, lo, hi)
            other = simulate(policy, logits, nudged, conf)
            same = (other.exit_slot == base.exit_slot) & (other.prediction == base.prediction)
            stable &= same.all(1)
    mean_exit = base.exit_slot.mean(1)
    picks: list[Any] = []
    for target in np.linspace(0.3, num_exits - 1.8, count):
        candidates = np.flatnonzero(stable & ~np.isin(np.arange(len(grid)), picks))
        picks.append(int(candidates[np.argmin(np.abs(mean_exit[candidates] - target))]))
    return [grid[i].item() for i in picks]


@pytest.mark.parametrize("batch_size", [1, 32])
@pytest.mark.parametrize("name, params", CASES, ids=IDS)
def test_live_runtime_matches_simulation(
    dev_cache: dict[str, Any], name: str, params: dict[str, Any], batch_size: int
) -> None:
    n = N_BATCH1 if batch_size == 1 else N_BATCH32
    outputs, engine = dev_cache["outputs"], dev_cache["engine"]
    logits, conf = outputs.logits[:, :n], outputs.confidence[:, :n]
    policy = build_policy(name, params, outputs)
    thresholds = stable_thresholds(policy, logits, conf, count=2)
    prepared = engine.prepare(dev_cache["data"].select(range(n)), batch_size)
    early = []
    for value in thresholds:
        sim = simulate(policy.with_threshold(value), logits, None, conf, return_probs=True)
        live = engine.run(prepared, policy, threshold=value)
        np.testing.assert_array_equal(live.exit_index, sim.exit_slot[0], err_msg=f"{name} at {value}")
        np.testing.assert_array_equal(live.predictions, sim.prediction[0], err_msg=f"{name} at {value}")
        np.testing.assert_allclose(live.probabilities, sim.probs[0], atol=1e-4)
        np.testing.assert_array_equal(live.exit_layer, np.asarray(engine.exits)[live.exit_index])
        early.append(live.exit_index)
    slots = np.concatenate(early)
    assert (slots < len(engine.exits) - 1).any(), "no input left early: the test could not fail"
    assert len(np.unique(slots)) >= 2, "every input left at the same exit: the test could not fail"


def test_engine_really_skips_layers_and_heads(
    minilm_sst2: Any, dev_cache: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows x layers computed equals the sum of exit layers; heads run only for rows still running."""
    engine, data = dev_cache["engine"], dev_cache["data"].select(range(40))
    model = minilm_sst2
    layer_rows: list[int] = []
    head_rows: dict[int, int] = {}
    run_layer = model.adapter.run_layer

    def counting_layer(i: int, hidden: torch.Tensor, context: Any) -> torch.Tensor:
        layer_rows.append(hidden.shape[0])
        return run_layer(i, hidden, context)

    def counting_head(k: int, forward: Any) -> Any:
        def counted(hidden: torch.Tensor, mask: torch.Tensor) -> Any:
            head_rows[k] = head_rows.get(k, 0) + hidden.shape[0]
            return forward(hidden, mask)

        return counted

    monkeypatch.setattr(model.adapter, "run_layer", counting_layer)
    for k, head in enumerate(model.heads):
        monkeypatch.setattr(head, "forward", counting_head(k, head.forward))
    for batch_size in (1, 16):
        layer_rows.clear()
        head_rows.clear()
        res = engine.predict(data, policy="maxprob", threshold=0.8, batch_size=batch_size)
        assert sum(layer_rows) == int(res.exit_layer.sum())
        still = [int((res.exit_index >= k).sum()) for k in range(len(model.heads))]
        assert [head_rows.get(k, 0) for k in range(len(model.heads))] == still
        assert res.exit_layer.min() < 6
        layer_rows.clear()
        head_rows.clear()
        res = engine.predict(data, policy="budget", threshold=2, batch_size=batch_size)
        assert sum(layer_rows) == 2 * len(data) and head_rows == {1: len(data)}


def test_results_come_back_in_input_order(dev_cache: dict[str, Any]) -> None:
    engine, data = dev_cache["engine"], dev_cache["data"].select(range(20))
    texts = [t[0] for t in data.texts]
    forward = engine.predict(texts, policy="entropy", threshold=0.5, batch_size=8)
    backward = engine.predict(texts[::-1], policy="entropy", threshold=0.5, batch_size=3)
    np.testing.assert_array_equal(forward.predictions, backward.predictions[::-1])
    np.testing.assert_array_equal(forward.exit_layer, backward.exit_layer[::-1])
    tokenised = engine.tokenizer(texts, padding=True, return_tensors="pt")
    from_batch = engine.predict(dict(tokenised), policy="entropy", threshold=0.5, batch_size=8)
    np.testing.assert_array_equal(forward.exit_index, from_batch.exit_index)
    one = engine.predict(texts[3], policy="entropy", threshold=0.5)
    assert one.predictions[0] == forward.predictions[3] and len(one) == 1


def test_default_policy_comes_from_the_model_config(minilm_sst2: Any, dev_cache: dict[str, Any]) -> None:
    engine, data = dev_cache["engine"], dev_cache["data"].select(range(16))
    assert minilm_sst2.config.policy is None
    full = engine.predict(data)
    assert (full.exit_layer == 6).all() and full.policy["name"] == "budget"
    minilm_sst2.config.policy = {"name": "maxprob", "params": {"tau": 0.6}, "temperatures": None}
    try:
        saved = engine.predict(data)
        assert saved.policy["params"]["tau"] == 0.6 and (saved.exit_layer < 6).any()
        slower = engine.predict(data, threshold=0.99)  # threshold overrides the saved policy's tau
        assert slower.exit_layer.mean() > saved.exit_layer.mean()
    finally:
        minilm_sst2.config.policy = None


def test_engine_errors(dev_cache: dict[str, Any]) -> None:
    engine = dev_cache["engine"]
    with pytest.raises(PolicyError, match="unknown policy 'fast'"):
        engine.predict(["good"], policy="fast")
    with pytest.raises(PolicyError, match=r"tau=2 out of range for signal 'maxprob'"):
        engine.predict(["good"], policy="maxprob", threshold=2)
    with pytest.raises(PolicyError, match="needs a value for tau"):
        engine.predict(["good"], policy="entropy")
    with pytest.raises(ValueError, match="batch_size 0"):
        engine.predict(["good"], batch_size=0)


# --------------------------------------------------------------------------------------------------------
# multi-model cascades (offramp.cascade.CascadeModel; the engine only needs its duck-typed interface)
# --------------------------------------------------------------------------------------------------------


class StandInCascade:
    """The interface of offramp.cascade.CascadeModel the engine relies on."""

    def __init__(self, members: list[Any]):
        self.members = members
        self.exits = [m.depth for m in members]
        self.tokenizer = None
        self.config = SimpleNamespace(policy=None, max_length=32, task=None)


def tiny_cascade(depths: tuple[int, ...] = (1, 2, 3)) -> Any:
    from transformers import AutoModel

    from offramp.backbones import tiny_config
    from offramp.model import ExitConfig, MultiExitModel

    members = []
    for i, depth in enumerate(depths):
        torch.manual_seed(i)
        encoder = AutoModel.from_config(tiny_config("bert", num_hidden_layers=depth))
        member = MultiExitModel(ExitConfig(backbone="tiny", num_labels=3, exits=[depth]), encoder)
        with torch.no_grad():
            member.heads[0].classifier.weight.mul_(8.0)  # confident enough for exits to spread
        members.append(member.eval())
    try:
        from offramp.cascade import CascadeModel
    except ImportError:  # the duck-typed interface is all the engine needs
        return StandInCascade(members)
    return CascadeModel(members).eval()


def random_batch(n: int = 21, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 20, (n,), generator=gen)
    ids = torch.randint(5, 99, (n, int(lengths.max())), generator=gen)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize("name", ["maxprob", "patience", "beem", "budget"])
def test_cascade_runtime_matches_simulation(name: str, batch_size: int) -> None:
    cascade = tiny_cascade()
    batch = random_batch()
    with torch.inference_mode():
        cached = torch.stack([m(**batch).logits[-1] for m in cascade.members]).numpy()
    policy = get_policy(name)
    engine = EarlyExitEngine(cascade)
    values = policy.grid(torch.as_tensor(cached), size=4).tolist()
    spread = []
    for value in values:
        sim = simulate(policy.with_threshold(value), cached)
        live = engine.predict(batch, policy=policy, threshold=value, batch_size=batch_size)
        np.testing.assert_array_equal(live.exit_index, sim.exit_slot[0])
        np.testing.assert_array_equal(live.predictions, sim.prediction[0])
        cost = np.cumsum(cascade.exits)[live.exit_index] if name != "budget" else live.exit_layer
        np.testing.assert_array_equal(live.layers_run, cost)  # every member run counts
        spread.append(live.exit_index)
    assert len(np.unique(np.concatenate(spread))) >= 2


def test_predict_cli_writes_jsonl(minilm_sst2_dir: Any, tmp_path: Any, capsys: Any) -> None:
    from offramp.cli import main

    src = tmp_path / "in.txt"
    src.write_text("a gripping , beautiful film\n\nthe worst movie of the year\n")
    assert main(["predict", str(minilm_sst2_dir), str(src), "--policy", "maxprob", "--threshold", "0.7"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["line"] for r in rows] == [1, 3]
    assert set(rows[0]) >= {"label", "label_id", "probabilities", "exit_layer", "layers_run"}
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-4
    code = main(["predict", str(minilm_sst2_dir), str(src), "--policy", "maxprob", "--threshold", "1.5"])
    err = capsys.readouterr().err
    assert code == 2 and "tau=1.5 out of range for signal 'maxprob'" in err
    assert len(err.strip().splitlines()) == 1
    code = main(["predict", str(minilm_sst2_dir), str(src), "--policy", "fastest"])
    assert code == 2 and "known policies: budget" in capsys.readouterr().err


def test_read_inputs_splits_pairs_and_names_bad_lines(tmp_path: Any) -> None:
    from offramp.cli.args import parse_params, parse_threshold
    from offramp.cli.predict import read_inputs

    src = tmp_path / "pairs.tsv"
    src.write_text("a\tb\n\nc\td\n")
    assert read_inputs(str(src), None) == ([("a", "b"), ("c", "d")], [1, 3])
    assert read_inputs(str(src), False)[0] == ["a\tb", "c\td"]
    src.write_text("a\tb\nno tab here\n")
    with pytest.raises(ValueError, match="line 2 has 1 tab-separated fields; this pair task expects"):
        read_inputs(str(src), True)
    with pytest.raises(FileNotFoundError, match="input file 'nope.txt' not found"):
        read_inputs("nope.txt", None)
    assert parse_threshold("0.5,0.6") == [0.5, 0.6] and parse_threshold("2") == 2.0
    with pytest.raises(ValueError, match="--threshold 'high': expected a number"):
        parse_threshold("high")
    params = parse_params(["t=3", "signal=entropy", "ensemble=true"])
    assert params == {"t": 3, "signal": "entropy", "ensemble": True}
    with pytest.raises(ValueError, match="--param 't3': expected KEY=VALUE"):
        parse_params(["t3"])
