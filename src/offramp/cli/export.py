"""``offramp export MODEL_DIR --format onnx [--int8] --out DIR``: one ONNX graph per block."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .args import prepare_out, say

HELP = "export a trained model to ONNX (one graph per block) for early exit under ONNX Runtime"

DESCRIPTION = """\
Export a trained multi-exit model to ONNX so that early exit runs under ONNX Runtime, the fastest CPU
path measured for offramp (issue 13): early exit saves layers, ONNX Runtime and int8 make each layer
cheaper, and the two stack.

The output folder holds one graph per block: the embeddings (embed.onnx), each layer up to the last exit
(layer_01.onnx, ...), each exit head (head_1.onnx, ...), and the whole backbone as one graph (stock.onnx,
the full-model baseline that `offramp bench` times), plus the model's offramp.json (exits, labels,
calibrated policy), the tokenizer and a manifest with checksums (onnx_export.json). Batch and sequence
axes are dynamic. The folder loads without the original model or its torch weights, and every command
that takes a MODEL_DIR (predict, evaluate, calibrate, bench, serve) accepts it:

  for threshold and budget policies (maxprob, entropy, energy, learned, ...) the runtime chains the
  blocks into ONE graph per batch, with the exit decisions, the dropping of rows that left and padding
  trimming inside ONNX Runtime (a one-row variant serves batch 1); other policies (patience, beem,
  pcee, ensembles, temperatures) call the graphs block by block. Both take the same exits, bit for
  bit, and simulation over the folder's cached outputs takes the same exits as the live runtime.

--int8 applies ONNX Runtime dynamic quantization to every graph: int8 weights for the linear maps of
attention and feed-forward blocks, activations quantized per call (embeddings, LayerNorm, softmax and
the heads stay fp32). Typical cost: a fraction of a point of accuracy; re-run `offramp calibrate` on the
exported int8 folder so the threshold fits the int8 model's outputs. Like torch dynamic int8, a row's
logits then depend slightly on the rows sharing its batch (live = simulated exactly at batch size 1).

Needs the onnx extra: pip install 'offramp[onnx]'."""

EXAMPLES = """\
examples:
  offramp export runs/sst2 --format onnx --out runs/sst2-onnx
  offramp export runs/sst2 --format onnx --int8 --out runs/sst2-int8
  offramp calibrate runs/sst2-int8 --target-speedup 2      # threshold for the int8 outputs
  offramp predict runs/sst2-int8 reviews.txt
  offramp bench runs/sst2-int8 --batch-sizes 1,64          # early exit vs stock.onnx, same precision"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    p.add_argument("model_dir", help="a model folder written by `offramp train` (not a cascade)")
    p.add_argument("--format", default="onnx", help="export format; only 'onnx' (default: onnx)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out folder and all it holds"
    )
    p.add_argument(
        "--int8", action="store_true", help="dynamic int8 quantization of every graph (ONNX Runtime)"
    )
    p.add_argument("--opset", type=int, help="ONNX opset of the graphs (default: 17)")
    p.add_argument(
        "--no-stock",
        action="store_true",
        help="skip stock.onnx (the whole backbone as one graph; only `offramp bench` uses it)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    """Implementation of ``offramp export``."""
    from ..export import DEFAULT_OPSET, check_exportable, check_format, export_onnx
    from ..io import human_size
    from ..model import ModelLoadError, MultiExitModel

    check_format(args.format)
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    if not 14 <= opset <= 21:
        raise ValueError(f"--opset {opset}: expected an ONNX opset from 14 to 21")
    if Path(args.out).resolve() == Path(args.model_dir).resolve():
        raise ValueError(f"--out {args.out!r} is the model folder itself; choose another folder")
    prepare_out(args)
    if (Path(args.model_dir) / "cascade.json").is_file():
        raise ValueError(f"{args.model_dir!r} is a cascade; only multi-exit model folders can be exported")
    try:
        model = MultiExitModel.load(args.model_dir)
    except ModelLoadError:
        if (Path(args.model_dir) / "onnx_export.json").is_file():
            raise ValueError(
                f"{args.model_dir!r} is already an ONNX export; export the torch model folder"
            ) from None
        raise
    check_exportable(model)
    say(
        f"exporting {args.model_dir} ({len(model.exits)} exits, {model.depth} layers) to ONNX"
        + (" int8" if args.int8 else "")
    )
    result = export_onnx(model, args.out, int8=args.int8, opset=opset, stock=not args.no_stock)
    say(_round_trip_line(model, result.folder, args.int8))
    say(
        f"wrote {result.folder}: {len(result.files)} graphs, {human_size(result.size_bytes)}, "
        f"{result.seconds:.1f} s"
    )
    return 0


def _round_trip_line(model: Any, folder: Path, int8: bool) -> str:
    """Run the torch model and the export on a few random inputs and report how far the logits differ."""
    import torch

    from ..exported import ExportedModel

    exported = ExportedModel.load(folder)
    generator = torch.Generator().manual_seed(0)
    vocab = int(model.backbone.config.vocab_size)
    ids = torch.randint(5, vocab, (4, 16), generator=generator)
    mask = torch.ones_like(ids)
    mask[2:, 9:] = 0
    with torch.no_grad():
        want = model(ids, mask).logits
    got = exported(ids, mask).logits
    diff = float((want - got).abs().max())
    same = float((want.argmax(-1) == got.argmax(-1)).float().mean())
    kind = "int8 vs fp32" if int8 else "fp32"
    return (
        f"check ({kind}, 4 random inputs, every exit): max |logit difference| {diff:.2g}, "
        f"same class {same:.0%}"
    )
