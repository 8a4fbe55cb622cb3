"""Trainer: bit-exact resume, no pickle in checkpoints, two-stage freezing, cascades, data order, DDP."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel, BertTokenizerFast

from offramp.backbones import tiny_config
from offramp.cascade import CascadeModel, load_any, truncate_backbone
from offramp.checkpoint import find_checkpoint
from offramp.data import TextDataset
from offramp.evaluate import per_exit_scores
from offramp.model import ExitConfig, MultiExitModel
from offramp.train import BatchOrder, RunSpec, TrainConfig, build_and_train

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "film", "the", "a", "plot", "was", "very"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
FAST = {"epochs": 2, "batch_size": 16, "progress": False, "max_length": 24}


def sentiment(n: int, seed: int = 0) -> TextDataset:
    """Sentences of random words, labelled by whether positive words outnumber negative ones."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
        pos = sum(w in ("good", "great", "fine") for w in words)
        neg = sum(w in ("bad", "awful", "poor") for w in words)
        texts.append((" ".join(words),))
        labels.append(int(pos >= neg))
    return TextDataset(texts, labels, ["neg", "pos"], task="sst2")


def factory(tokenizer: BertTokenizerFast) -> Any:
    def make(exits: list[int] | None, **config_kwargs: Any) -> MultiExitModel:
        torch.manual_seed(0)
        encoder = AutoModel.from_config(tiny_config("bert", vocab_size=len(VOCAB)))
        config = ExitConfig(backbone="tiny", num_labels=2, exits=exits, head="mean", **config_kwargs)
        return MultiExitModel(config, encoder, tokenizer)

    return make


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.single_thread


TRAIN, VAL = sentiment(64), sentiment(16, seed=1)


# -- resume --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "kill_at", "options"),
    [
        ("joint", 3, {}),  # mid-epoch 1 (4 steps per epoch)
        ("sweet", 6, {"group_by_length": True}),  # mid-epoch 2 of a length-grouped order
        ("cosee", 3, {"grad_accum": 2}),  # mid-epoch 2: after an epoch-end signal-range update
        ("two-stage", 10, {"learned_exit": True}),  # inside stage 2 (8 steps per stage)
    ],
)
def test_killed_and_resumed_run_matches_an_uninterrupted_one(
    tmp_path: Path, tokenizer: BertTokenizerFast, scheme: str, kill_at: int, options: dict[str, Any]
) -> None:
    learned = options.get("learned_exit", False)
    spec = RunSpec(scheme=scheme, model_factory=factory(tokenizer), learned_exit=learned)
    cfg = TrainConfig(**FAST, **{k: v for k, v in options.items() if k != "learned_exit"})
    straight, log = build_and_train(TRAIN, VAL, tmp_path / "straight", spec, cfg)
    _, partial = build_and_train(
        TRAIN, VAL, tmp_path / "killed", spec, replace(cfg, save_every=kill_at, stop_after=kill_at)
    )
    assert partial["stopped"] == kill_at
    assert find_checkpoint(tmp_path / "killed.checkpoints").name == f"step-{kill_at:08d}"
    assert not (tmp_path / "killed").exists()  # a killed run leaves no model folder
    resumed, log2 = build_and_train(
        TRAIN, VAL, tmp_path / "killed", spec, replace(cfg, save_every=kill_at), resume=True
    )
    assert_same_weights(straight, resumed)
    assert [e["val"] for e in log["epochs"]] == [e["val"] for e in log2["epochs"]]
    assert_same_weights(straight, MultiExitModel.load(tmp_path / "killed"))


def test_checkpoints_hold_only_safetensors_and_json(tmp_path: Path, tokenizer: BertTokenizerFast) -> None:
    spec = RunSpec(scheme="cosee", model_factory=factory(tokenizer))
    build_and_train(TRAIN, VAL, tmp_path / "m", spec, TrainConfig(save_every=2, **FAST))
    steps = sorted(p.name for p in (tmp_path / "m.checkpoints").iterdir())
    assert steps == ["step-00000006", "step-00000008"]  # keep_checkpoints=2 pruned steps 2 and 4
    folder = tmp_path / "m.checkpoints" / "step-00000008"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "best.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
        "rank-0.json",
        "rank-0.safetensors",
        "trainer_state.json",
    ]
    for path in folder.iterdir():
        head = path.read_bytes()[:2]
        assert head not in (b"\x80\x02", b"\x80\x04", b"\x80\x05", b"PK")  # no pickle, no torch.save zip
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            with safe_open(str(path), framework="pt") as f:
                assert list(f.keys())
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["position"]["global_step"] == 8 and state["position"]["epoch"] == 1
    rank = json.loads((folder / "rank-0.json").read_text())
    assert set(rank["scheme"]) == {"range", "epoch_min", "epoch_max"}  # COSEE's signal range
    with safe_open(str(folder / "rank-0.safetensors"), framework="pt") as f:
        assert {"torch", "numpy", "scheme.generator"} <= set(f.keys())


def test_resume_refuses_a_different_run(tmp_path: Path, tokenizer: BertTokenizerFast) -> None:
    spec, cfg = RunSpec(model_factory=factory(tokenizer)), TrainConfig(**FAST)
    build_and_train(TRAIN, None, tmp_path / "m", spec, replace(cfg, save_every=2, stop_after=2))
    with pytest.raises(ValueError, match="different run"):
        build_and_train(TRAIN, None, tmp_path / "m", spec, replace(cfg, batch_size=8), resume=True)
    with pytest.raises(ValueError, match="group_by_length"):
        build_and_train(TRAIN, None, tmp_path / "m", spec, replace(cfg, group_by_length=True), resume=True)
    with pytest.raises(FileNotFoundError):
        build_and_train(TRAIN, None, tmp_path / "x", spec, cfg, resume=tmp_path / "nowhere")


# -- two-stage -----------------------------------------------------------------------------------


def test_two_stage_trains_the_final_exit_then_only_the_other_heads(
    tmp_path: Path, tokenizer: BertTokenizerFast
) -> None:
    spec, cfg = RunSpec(scheme="two-stage", model_factory=factory(tokenizer)), TrainConfig(**FAST)
    initial = factory(tokenizer)(None)
    stage1, log = build_and_train(
        TRAIN, None, tmp_path / "m", spec, replace(cfg, save_every=8, stop_after=8)
    )  # end of stage 1
    assert log["stages"] == [{"name": "final-exit", "total_steps": 8}]
    after1 = {k: v.clone() for k, v in stage1.state_dict().items()}
    final, _ = build_and_train(TRAIN, None, tmp_path / "m", spec, cfg, resume=True)
    before = initial.state_dict()
    for name, value in final.state_dict().items():
        internal_head = name.startswith(("heads.0.", "heads.1."))
        if internal_head:  # untouched in stage 1, trained in stage 2
            assert torch.equal(after1[name], before[name]), name
            assert not torch.equal(value, after1[name]), name
        else:  # backbone and final exit: trained in stage 1, frozen in stage 2
            assert torch.equal(value, after1[name]), name
    assert not torch.equal(after1["heads.2.classifier.weight"], before["heads.2.classifier.weight"])
    assert all(p.requires_grad for p in final.parameters())  # nothing left frozen afterwards


# -- multi-model cascades --------------------------------------------------------------------------


def test_multi_model_trains_truncated_members_and_round_trips(
    tmp_path: Path, tokenizer: BertTokenizerFast
) -> None:
    cascade, log = build_and_train(
        TRAIN,
        None,
        tmp_path / "mm",
        RunSpec(scheme="multi-model", exits=[1, 3], model_factory=factory(tokenizer)),
        TrainConfig(**FAST),
    )
    assert isinstance(cascade, CascadeModel) and len(log["members"]) == 2
    assert cascade.exits == [1, 3] and list(cascade.exit_costs.costs) == [1, 4]
    assert [len(m.backbone.encoder.layer) for m in cascade.members] == [1, 3]
    names = sorted(p.name for p in (tmp_path / "mm").iterdir())
    assert {"cascade.json", "member-1", "member-2", "tokenizer.json"} <= set(names)
    assert not (tmp_path / "mm.members").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    loaded = load_any(tmp_path / "mm")
    assert isinstance(loaded, CascadeModel) and loaded.exits == [1, 3]
    assert loaded.members[0].backbone.config.num_hidden_layers == 1
    batch = dict(tokenizer(["good film", "the plot was very bad"], padding=True, return_tensors="pt"))
    cascade.eval()
    with torch.no_grad():
        out, again = cascade(**batch), loaded(**batch)
    assert out.logits.shape == (2, 2, 2)
    assert torch.equal(out.logits, again.logits)
    for k, member in enumerate(cascade.members):
        with torch.no_grad():
            assert torch.equal(out.logits[k], member(**batch).logits[0])
    scores = per_exit_scores(loaded, VAL, batch_size=8, max_length=24)  # cached evaluation sees K exits
    assert [s["layer"] for s in scores] == [1, 3]
    # `offramp evaluate` on the cascade folder: answering at member k costs 1+…+k layers.
    from offramp.cli import main

    rows = [f"{t[0]}\t{VAL.label_names[y]}" for t, y in zip(VAL.texts, VAL.labels, strict=True)]
    (tmp_path / "val.tsv").write_text("\n".join(["sentence\tlabel", *rows]) + "\n")
    out = tmp_path / "eval.json"
    argv = ["evaluate", str(tmp_path / "mm"), "--data-file", str(tmp_path / "val.tsv"), "--text-columns"]
    argv += ["sentence", "--json", str(out), "--no-progress", "--policies", "budget", "--grid-size", "4"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["multi_model"] is True and report["examples"] == len(VAL)
    curve = report["policies"]["budget"]["curve"]
    # budget(1): every input leaves at member 1 (1 layer of 3); budget(2): member 2 costs 1+3 = 4 layers.
    assert sorted(round(v, 6) for v in curve["speedup"]) == [0.75, 3.0]
    plain = factory(tokenizer)([2, 3])
    plain.save(tmp_path / "plain")
    assert isinstance(load_any(tmp_path / "plain"), MultiExitModel)


def test_truncating_a_member_keeps_its_outputs(tmp_path: Path, tokenizer: BertTokenizerFast) -> None:
    model = factory(tokenizer)([2]).eval()
    batch = dict(tokenizer(["good film", "bad"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        before = model(**batch).logits
        truncate_backbone(model, 2)
        after = model(**batch).logits
    assert len(model.backbone.encoder.layer) == 2 and model.backbone.config.num_hidden_layers == 2
    assert torch.equal(before, after)
    model.save(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(MultiExitModel.load(tmp_path / "m")(**batch).logits, before)


# -- data order ---------------------------------------------------------------------------------


def test_batch_order_is_a_function_of_seed_stage_and_epoch() -> None:
    a, b = BatchOrder(10, 3, seed=1, world=2, rank=0), BatchOrder(10, 3, seed=1, world=2, rank=1)
    assert a.per_rank == 2 and a.batches(0, 0) == BatchOrder(10, 3, 1, 2, 0).batches(0, 0)
    rows = [i for batch in a.batches(0, 0) + b.batches(0, 0) for i in batch]
    assert sorted(rows) == list(range(10))  # 4 global batches split 2 + 2, every row once
    assert a.batches(0, 0) != a.batches(0, 1) and a.batches(0, 0) != a.batches(1, 0)
    odd = [BatchOrder(7, 3, seed=1, world=2, rank=r).batches(0, 0) for r in range(2)]
    assert [len(x) for x in odd] == [2, 2]  # 3 global batches padded to 4 by wrapping around


def test_length_grouping_cuts_padding_and_keeps_every_row_once() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=1000).tolist()
    plain = BatchOrder(1000, 16, seed=3).batches(0, 0)
    grouped = BatchOrder(1000, 16, seed=3, lengths=lengths).batches(0, 0)
    assert sorted(i for b in grouped for i in b) == list(range(1000))
    assert len(grouped) == len(plain)

    def padded(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded(grouped) < 0.7 * padded(plain)  # random lengths 3..59: about half the padding
    assert grouped == BatchOrder(1000, 16, seed=3, lengths=lengths).batches(0, 0)
    assert grouped != BatchOrder(1000, 16, seed=3, lengths=lengths).batches(0, 1)
    # batches are shuffled, not served longest-first
    firsts = [max(lengths[i] for i in b) for b in grouped[:10]]
    assert firsts != sorted(firsts, reverse=True)
    with pytest.raises(ValueError, match="one per row"):
        BatchOrder(10, 3, seed=1, lengths=[1, 2])


def test_train_config_validates() -> None:
    with pytest.raises(ValueError, match="save_every"):
        TrainConfig(save_every=-1)
    with pytest.raises(ValueError, match="stop_after"):
        TrainConfig(stop_after=0)


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_train_wires_schemes_learned_exit_and_checkpoints(
    tmp_path: Path, tokenizer: BertTokenizerFast
) -> None:
    from offramp.cli import main
    from offramp.data import default_glue_dir

    backbone = tmp_path / "tiny"
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config("bert", vocab_size=len(VOCAB))).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    argv = [
        "train", "--task", "sst2", "--data-dir", str(default_glue_dir()), "--backbone", str(backbone),
        "--train-size", "48", "--val-size", "16", "--epochs", "1", "--batch-size", "16", "--max-length", "24",
        "--scheme", "sweet", "--base-loss", "weighted", "--scheme-opt", "weight_by=layer", "--learned-exit",
        "--learned-exit-loss", "bce", "--save-every", "2", "--group-by-length", "--keep-checkpoints",
        "--out", str(tmp_path / "m"), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((tmp_path / "m" / "offramp.json").read_text())
    assert config["learned_exit"] is True
    assert config["info"]["scheme"] == {
        "name": "sweet",
        "base_loss": "weighted",
        "base_options": {"weight_by": "layer"},
    }
    assert config["info"]["train"]["learned_exit"] == {"loss": "bce", "detach": True, "weight": 1.0}
    assert config["info"]["train"]["config"]["group_by_length"] is True
    assert find_checkpoint(tmp_path / "m.checkpoints").name == "step-00000002"
    first = MultiExitModel.load(tmp_path / "m")
    assert main(argv + ["--resume"]) == 2  # the finished model is the user's: refused without --overwrite
    assert main(argv + ["--resume", "--overwrite"]) == 0  # from step 2 of 3: must land on the same weights
    assert_same_weights(first, MultiExitModel.load(tmp_path / "m"))
    assert main([*argv[:-3], "--scheme-opt", "alpha=1", "--out", str(tmp_path / "x"), "--no-progress"]) == 2


# -- two processes --------------------------------------------------------------------------------

DDP_SCRIPT = """
import json, os, sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from transformers import BertTokenizerFast
from test_train import TRAIN, VOCAB, factory, FAST
from offramp.train import RunSpec, TrainConfig, build_and_train
vocab = os.path.join({tmp!r}, "vocab.txt")
open(vocab, "w").write("\\n".join(VOCAB) + "\\n")
tok = BertTokenizerFast(vocab_file=vocab)
model, log = build_and_train(TRAIN, None, os.path.join({tmp!r}, "out"),
                             RunSpec(scheme="cosee", model_factory=factory(tok)),
                             TrainConfig(**{{**FAST, "epochs": 1}}))
from accelerate import PartialState
state = PartialState()
digest = float(sum(p.double().sum() for p in model.parameters()))
json.dump({{"world": state.num_processes, "steps": log["total_steps"], "digest": digest}},
          open(os.path.join({tmp!r}, f"rank{{state.process_index}}.json"), "w"))
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_cpu_processes_train_one_model(tmp_path: Path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(Path(__file__).parent), tmp=str(tmp_path))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["steps"] == 2  # 64 rows / 16 per batch = 4 global batches, 2 per process
    assert ranks[0]["digest"] == ranks[1]["digest"]  # DDP kept the replicas identical
    assert MultiExitModel.load(tmp_path / "out").exits == [1, 2, 3]
