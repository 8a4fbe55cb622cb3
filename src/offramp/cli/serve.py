"""``offramp serve``: serve a model over HTTP with dynamic batching and a live speed knob."""

from __future__ import annotations

import argparse
import math
from typing import Any

from .args import add_policy_args, add_quantize_arg, check_quantize_arg, maybe_quantize, policy_from_args, say

HELP = "serve a model over HTTP with dynamic batching and a live speed knob"

EXAMPLES = """routes:
  POST /predict                       {"inputs": ["a gripping film", ...], "parameters": {"speedup": 2}}
  POST /v2/models/NAME/infer          KServe v2 (Open Inference Protocol); input 'text' (+ 'text_pair')
  GET|PUT /v2/models/NAME/policy      the default policy, changed at run time: {"threshold": 0.9},
                                      {"policy": "entropy", "threshold": 0.3}, {"target_speedup": 2}
  GET /v2/health/live|ready, /v2/models/NAME, /metrics (Prometheus), / (playground page)

Per request, "parameters" may hold policy (a name or {"name", "params"}), threshold, params, or speedup
(a threshold picked for that speed-up on recent traffic; needs a window, see --shadow-every).

examples:
  offramp serve runs/sst2
  offramp serve runs/sst2 --port 8080 --max-batch-size 32 --max-wait-ms 2
  offramp serve runs/sst2 --target-speedup 2.0          # hold 2x on live traffic, no labels needed
  offramp serve runs/sst2 --policy entropy --threshold 0.3
  curl -s localhost:8000/predict -d '{"inputs": ["a gripping, funny film"]}'"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help=HELP,
        description="Serve a model folder (multi-exit or cascade) over HTTP: KServe v2 and a plain /predict "
        "route, requests batched dynamically through the early-exit runtime, the exit policy changeable "
        "per request and at run time, optional label-free control of the speed-up, Prometheus metrics. "
        "Binds to 127.0.0.1 unless --host says otherwise; the admin route has no authentication.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    p.add_argument("model_dir", help="a folder written by `offramp train` (or a cascade folder)")
    s = p.add_argument_group("server")
    s.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    s.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    s.add_argument("--name", default="offramp", help="model name in the v2 routes (default: offramp)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    b = p.add_argument_group("batching and limits")
    b.add_argument("--max-batch-size", type=int, default=64, help="inputs per model call (default: 64)")
    b.add_argument("--max-wait-ms", type=float, default=5.0, help="wait for more requests (default: 5 ms)")
    b.add_argument("--max-queue", type=int, default=2048, help="queued inputs before 429 (default: 2048)")
    b.add_argument("--max-texts", type=int, default=256, help="inputs per request before 413 (default: 256)")
    b.add_argument("--max-chars", type=int, default=10_000, help="characters per text before 413 (10000)")
    b.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait (default: 30)")
    add_policy_args(p)
    add_quantize_arg(p)
    c = p.add_argument_group("label-free speed control")
    c.add_argument(
        "--target-speedup",
        type=float,
        metavar="X",
        help="keep the layer-count speed-up at X on live traffic by re-picking the threshold on a window "
        "of recent inputs (no labels); the policy is --policy, else the model's own, else maxprob",
    )
    c.add_argument(
        "--shadow-every",
        type=int,
        metavar="N",
        help="run 1 input in N through every exit to fill the window (default: 16 with --target-speedup; "
        "given alone, fills the window for per-request 'speedup' without holding a target)",
    )
    c.add_argument("--window", type=int, default=256, help="inputs in the window (default: 256)")
    c.add_argument("--repick-every", type=int, default=64, help="re-pick after N inputs (default: 64)")
    c.add_argument(
        "--warmup",
        metavar="FILE",
        help="unlabelled texts (one per line; pairs TAB-separated) run through every exit at start to "
        "seed the window, instead of running the first --window requests through every exit",
    )
    c.add_argument(
        "--exit-speedup",
        action="store_true",
        help="hold the policy's exit-layer speed-up at X rather than the compute speed-up that also "
        "counts the shadow rows' full-model cost",
    )
    return p


def serve_config(args: argparse.Namespace) -> Any:
    """The :class:`~offramp.serve.ServeConfig` the flags ask for (ValueError naming a bad flag)."""
    from ..serve import ControlConfig, ServeConfig

    for flag in ("max_batch_size", "max_queue", "max_texts", "max_chars", "window", "repick_every"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected a positive integer")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: expected 1-65535")
    if args.target_speedup is not None and not (
        math.isfinite(args.target_speedup) and args.target_speedup >= 1
    ):
        raise ValueError(
            f"--target-speedup {args.target_speedup:g}: expected a speed-up ratio >= 1.0, e.g. 2.0"
        )
    if args.shadow_every is not None and args.shadow_every < 0:
        raise ValueError(f"--shadow-every {args.shadow_every}: expected N >= 0 (0: no shadow rows)")
    if args.target_speedup is not None and args.shadow_every and not args.exit_speedup:
        if args.shadow_every <= args.target_speedup:
            raise ValueError(
                f"--shadow-every {args.shadow_every} with --target-speedup {args.target_speedup:g}: the "
                "shadow rows alone (full model) would cap the speed-up; expected --shadow-every > "
                "--target-speedup"
            )
    if args.timeout <= 0 or args.max_wait_ms < 0:
        raise ValueError("--timeout must be > 0 and --max-wait-ms >= 0")
    control = ControlConfig(
        target_speedup=args.target_speedup,
        shadow_every=16 if args.shadow_every is None else args.shadow_every,
        window=args.window,
        repick_every=args.repick_every,
        min_window=min(32, args.window),
        warmup=args.warmup is None,
        count_shadow=not args.exit_speedup,
    )
    return ServeConfig(
        name=args.name,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        timeout_s=args.timeout,
        control=control,
    )


def run(args: argparse.Namespace) -> int:
    """Load the model, build the app, serve until interrupted (graceful shutdown)."""
    config = serve_config(args)
    check_quantize_arg(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}: expected a positive integer")
        import torch

        torch.set_num_threads(args.threads)
    from ..cascade import load_any
    from ..serve import build_state, create_app, run_server
    from ..serve.server import is_loopback
    from .predict import is_pair_task, read_inputs

    model = maybe_quantize(load_any(args.model_dir), args)
    policy = policy_from_args(args, model)
    warmup = None
    if args.warmup:
        try:
            warmup = read_inputs(args.warmup, is_pair_task(model))[0]
        except FileNotFoundError:
            raise FileNotFoundError(
                f"--warmup {args.warmup}: no such file; expected unlabelled texts"
            ) from None
    sample = args.shadow_every is not None and args.shadow_every > 0
    state = build_state(model, config, policy, warmup=warmup, sample=sample)
    if not is_loopback(args.host):
        say(
            f"warning: binding to {args.host}: the server (and its admin route) is reachable from the network"
        )
    knob = state.knob.state()
    say(
        f"serving {args.model_dir} as {config.name!r} on http://{args.host}:{args.port} "
        f"(policy {knob.policy['name']} {knob.threshold}, target {knob.target_speedup or 'none'})"
    )
    run_server(create_app(state), args.host, args.port, args.log_level)
    return 0
