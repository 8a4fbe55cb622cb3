"""Do the real all-mpnet-base-v2 weights (short name ``mpnet-base``) load and run exactly? One report.

Checks, written to ``results/mpnet_check.md``:

1. ``MultiExitModel.from_backbone("mpnet-base", 2)`` loads (MPNetModel, 12 layers) and picks the
   checkpoint's natural pooling, mean (``1_Pooling``).
2. Real weights: the mean-pooled cosine of a paraphrase pair is about 0.7, of an unrelated pair about 0
   (random weights give near 1 for both).
3. The adapter run layer by layer equals the stock ``AutoModel``'s ``hidden_states`` (max abs difference
   over real tokens) on padded batches of real SST-2 dev sentences.
4. Inference ms/sentence of the full 12-layer model (one exit after the last layer), batch 1 and 64,
   against minilm-l6, on SST-2 dev sentences (max length 64).

Run::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/mpnet_check.py --check
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
GLUE = ROOT.parent.parent / "shared" / "data" / "glue"
COMMAND = "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/mpnet_check.py --check"
PAIRS = {
    "paraphrase": ("A man is playing a guitar.", "A person plays the guitar."),
    "paraphrase 2": ("How do I learn to cook quickly?", "What is the fastest way to learn cooking?"),
    "unrelated": ("A man is playing a guitar.", "The quarterly tax report is due next Tuesday."),
    "unrelated 2": ("How do I learn to cook quickly?", "Volcanic rock cools into basalt columns."),
}


def _batch(tokenizer, texts: list[str], max_length: int = 64) -> dict[str, torch.Tensor]:
    return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling: average over the real tokens."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def cosines(model) -> dict[str, float]:
    """Mean-pooled cosine of each pair, through the adapter's layers (what an exit head sees)."""
    out = {}
    for name, (a, b) in PAIRS.items():
        enc = _batch(model.tokenizer, [a, b])
        hidden = layer_states(model, enc)[-1]
        emb = mean_pool(hidden, enc["attention_mask"])
        out[name] = float(torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0))
    return out


def layer_states(model, enc: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Hidden states after each layer, run by the offramp adapter."""
    with torch.inference_mode():
        return model.adapter.forward_all(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))


def stock_diff(model, path: str, sentences: list[str]) -> list[float]:
    """Per layer, max |adapter - stock AutoModel| over the real tokens of a padded batch."""
    from transformers import AutoModel

    stock = AutoModel.from_pretrained(path, use_safetensors=True).eval()
    enc = _batch(model.tokenizer, sentences)
    with torch.inference_mode():
        ref = stock(**enc, output_hidden_states=True).hidden_states[1:]
    real = enc["attention_mask"].bool()
    return [float((a - b).abs()[real].max()) for a, b in zip(layer_states(model, enc), ref, strict=True)]


def ms_per_sentence(model, sentences: list[str], batch: int, repeats: int) -> float:
    """Median over ``repeats`` of the wall time of a full forward, per sentence."""
    enc = _batch(model.tokenizer, sentences[:batch])
    times = []
    with torch.inference_mode():
        model(**enc)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(**enc)
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / batch


def check(threads: int) -> str:
    """Run every check; the markdown report."""
    from offramp.data import load_glue
    from offramp.model import MultiExitModel, resolve_backbone

    torch.set_num_threads(threads)
    sentences = [row[0] for row in load_glue("sst2", GLUE, "dev").texts[:64]]
    start = time.perf_counter()
    path = resolve_backbone("mpnet-base")
    resolve_s = time.perf_counter() - start
    mpnet = MultiExitModel.from_backbone("mpnet-base", 2, exits=[12]).eval()
    minilm = MultiExitModel.from_backbone("minilm-l6", 2, exits=[6]).eval()
    cos = cosines(mpnet)
    diffs = stock_diff(mpnet, path, sentences[:8])
    speed = {
        name: {b: ms_per_sentence(m, sentences, b, 20 if b == 1 else 5) for b in (1, 64)}
        for name, m in (("mpnet-base", mpnet), ("minilm-l6", minilm))
    }
    return render(mpnet, path, resolve_s, cos, diffs, speed, threads)


def render(mpnet, path, resolve_s, cos, diffs, speed, threads) -> str:
    enc = type(mpnet.backbone).__name__
    ok_cos = cos["paraphrase"] > 0.5 and abs(cos["unrelated"]) < 0.25
    lines = [
        "# Real-weights check: all-mpnet-base-v2 as `mpnet-base`",
        "",
        f"Command: `{COMMAND}` ({datetime.date.today().isoformat()}, {platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs (load average {os.getloadavg()[0]:.1f}), "
        f"{threads} threads, torch {torch.__version__}).",
        "",
        f"- Loads: `MultiExitModel.from_backbone('mpnet-base', 2)` → {enc}, "
        f"{mpnet.adapter.num_layers} layers, hidden {mpnet.adapter.hidden_size}, natural pooling "
        f"**{mpnet.config.head}** (1_Pooling). Folder "
        f"`{path}` (first call assembles and checks the five parts; this call: {resolve_s:.1f} s).",
        "- Mean-pooled cosine (final layer, via the adapter): "
        + ", ".join(f"{k} **{v:.3f}**" for k, v in cos.items())
        + f" → {'real pretrained weights' if ok_cos else 'NOT as expected'} "
        "(paraphrase ≈ 0.7, unrelated ≈ 0).",
        f"- Adapter vs stock `AutoModel` hidden states, 8 padded SST-2 dev sentences, max abs diff per layer "
        f"(real tokens): {', '.join(f'{d:.1e}' for d in diffs)}; max **{max(diffs):.1e}**.",
        "",
        f"Inference, full forward (one exit after the last layer), SST-2 dev sentences, max length 64, "
        f"{threads} threads, median ms per sentence:",
        "",
        "| backbone | batch 1 | batch 64 |",
        "|---|---|---|",
    ]
    for name, row in speed.items():
        lines.append(f"| {name} | {row[1]:.1f} | {row[64]:.2f} |")
    ratio = {b: speed["mpnet-base"][b] / speed["minilm-l6"][b] for b in (1, 64)}
    lines += ["", f"mpnet-base / minilm-l6: {ratio[1]:.1f}× at batch 1, {ratio[64]:.1f}× at batch 64.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="run the checks and write the report")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "results" / "mpnet_check.md"))
    args = p.parse_args(argv)
    if not args.check:
        p.print_help()
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from offramp.io import write_text_atomic

    text = check(args.threads)
    write_text_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
