"""Conflicting gradients between exits (SWEET §3.1).

For every layer that precedes an exit (except the last layer, which only its own classifier
updates), take the gradient of each classifier's loss with respect to that layer's last
feed-forward matrix, and average the cosine similarity between the rows of the gradient matrices
for every pair of classifiers that update the layer. Values near 0 mean near-orthogonal updates
(classifiers pulling the shared weights in unrelated directions); SWEET reports the following
classifier roughly orthogonal to later ones, and later ones aligned with each other.

Choices (the paper is silent): rows whose gradient is all zero for either classifier are left out
of the average; the loss is the plain per-exit task loss (cross-entropy, or squared error for
regression) averaged over the batch; the model runs in training mode (dropout on), as during
fine-tuning, with a fixed seed. For ALBERT the matrix is shared by every layer application, so its
gradient sums over all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .losses import per_exit_task_loss
from .model import MultiExitModel


def last_feed_forward(layer: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in a transformer layer: its feed-forward output matrix.

    True for every supported family (BERT/RoBERTa/ELECTRA/MPNet/DeBERTa ``output.dense``,
    DistilBERT ``ffn.lin2``, ALBERT ``ffn_output``).
    """
    linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"layer {type(layer).__name__} has no linear feed-forward matrix")
    return linears[-1]


@dataclass
class LayerSimilarity:
    """Pairwise mean row-cosine similarity of the classifiers updating one layer."""

    layer: int  # 1-based layer number
    classifiers: list[int]  # 1-based exit numbers whose loss reaches this layer
    similarity: list[list[float]]  # [i][j] over ``classifiers``

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "classifiers": self.classifiers, "similarity": self.similarity}


def row_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity between matching rows of two matrices, skipping all-zero rows."""
    norms = a.norm(dim=1) * b.norm(dim=1)
    keep = norms > 0
    if not keep.any():
        return float("nan")
    return float(((a * b).sum(dim=1)[keep] / norms[keep]).mean())


def conflicting_gradients(
    model: MultiExitModel, batch: dict[str, torch.Tensor], seed: int = 0
) -> list[LayerSimilarity]:
    """SWEET §3.1 on one batch: for each exit layer but the last, similarities between classifiers."""
    if "labels" not in batch:
        raise ValueError("conflicting-gradient analysis needs a labelled batch")
    if model.num_exits < 2 or model.exits[0] >= model.adapter.num_layers:
        raise ValueError(f"exits {model.exits}: the analysis needs an exit before the last layer")
    torch.manual_seed(seed)
    was_training = model.training
    model.train()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    try:
        output = model(**inputs)
        losses = per_exit_task_loss(output.logits, batch["labels"], model.is_regression).mean(dim=1)
        layers = [(slot, layer) for slot, layer in enumerate(model.exits) if layer < model.adapter.num_layers]
        weights = [last_feed_forward(model.adapter.layer_module(layer - 1)).weight for _, layer in layers]
        results = []
        for (slot, layer), weight in zip(layers, weights, strict=True):
            updaters = list(range(slot, model.num_exits))
            grads = [torch.autograd.grad(losses[k], weight, retain_graph=True)[0] for k in updaters]
            sim = [[row_cosine(gi, gj) for gj in grads] for gi in grads]
            results.append(
                LayerSimilarity(layer=layer, classifiers=[k + 1 for k in updaters], similarity=sim)
            )
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return results


def plot_similarities(results: list[LayerSimilarity], path: str, title: str = "") -> None:
    """One heatmap per layer, like SWEET's Figure 3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(results), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    for ax, res in zip(axes[0], results, strict=False):
        data = torch.tensor(res.similarity).numpy()
        im = ax.imshow(data, vmin=-1, vmax=1, cmap="RdBu_r")
        labels = [f"C-{c}" for c in res.classifiers]
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=8)
        ax.set_title(f"layer {res.layer}")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="mean row cosine")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
