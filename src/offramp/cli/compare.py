"""``offramp compare``: aggregate evaluate results over seeds and compare configurations."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .args import print_table, say

HELP = "aggregate evaluate results over seeds and compare configurations"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "compare",
        help=HELP,
        description="Read evaluate JSONs (or model folders holding one eval_<data>_<split>.json), group "
        "runs that differ only in seed (any other differing setting, e.g. max length or learning rate, "
        "makes a separate configuration), give mean ± 95%% interval of each policy's score at each target "
        "speed-up, and say which configuration wins at each target.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_OR_JSON", help="evaluate JSONs or model folders")
    p.add_argument("--report", metavar="DIR", help="write a Markdown report with an overlay plot into DIR")
    p.add_argument("--json", help="write the aggregate as JSON here")
    return p


def run(args: argparse.Namespace) -> int:
    """Implementation of ``offramp compare``."""
    from ..compare import compare_runs, load_run
    from ..io import write_json_atomic
    from ..render import format_interval, winner_sentence, write_compare_report

    comparison = compare_runs([load_run(r) for r in args.runs])
    ids = comparison.ids()
    for conf in comparison.configurations:
        full = format_interval(conf.final)
        print(
            f"{ids[conf.label]}: {conf.label}  ({len(conf.runs)} runs, seeds {conf.seeds}; full model {full})"
        )
        keys = [f"{t:g}" for t in conf.targets]
        rows = [
            [name, *[format_interval(p.at_speedup[k]) for k in keys], format_interval(p.auc)]
            for name, p in conf.policies.items()
        ]
        print_table(["policy", *[f"@{k}x" for k in keys], "AUC 1-3x"], rows)
        print()
    for w in comparison.winners:
        print(winner_sentence(w, ids))
    if args.json:
        write_json_atomic(Path(args.json), comparison.to_json())
    if args.report:
        write_compare_report(comparison, args.report)
        say(f"report written to {Path(args.report) / 'report.md'}")
    return 0
