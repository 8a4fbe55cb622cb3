"""The Ray Serve deployment (``offramp.serve.ray_serve``) on a local Ray instance, checked and timed (#11).

Trains nothing: serves ``runs/serve_model`` (else ``runs/bench_runtime``). Starts Ray in this process
(``ray.init(num_cpus=2)``, no dashboard, Serve's HTTP proxy on 127.0.0.1 and a free port), deploys
``build_deployment`` with early exit at 2x (maxprob, the threshold picked label-free on the sent texts'
exit outputs), and sends a bounded load of SST-2 dev sentences to loopback (one text per request, 1 and
8 concurrent clients, bench_serve's load generator). Every prediction and exit layer is compared with
``EarlyExitEngine.predict`` under the same policy, one v2 ``infer`` request is checked the same way,
then Serve and Ray shut down. For scale, the same load runs against ``offramp serve`` (a child
process, same batching settings and torch threads). A watchdog alarm ends the run after ``--deadline``
seconds (Ray is shut down on the way out). Exit status 1 on any error or disagreement.

Ray's core servers (GCS, raylet, workers) listen on every interface of the host, whatever Serve's
HTTP host is; to keep them off the network, run the check in a network namespace that has only
loopback (Linux; ``unshare -rn`` as an unprivileged user where user namespaces are enabled):

    unshare -n sh -c 'ip link set lo up && .venv/bin/python benchmarks/ray_serve_check.py'   # ~1 min

(``--requests 100 --clients 4`` for a quicker run; the results record which network the run had.)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import GLUE, RESULTS, ROOT, ServerProcess, drive, set_policy, summarise  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine

#: One load run: bench_serve's LoadRun fields plus ``mean_batch`` (inputs per model call).
Run = dict[str, Any]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: runs/serve_model, else runs/bench_runtime)")
    p.add_argument("--requests", type=int, default=200, help="requests per load run (default: 200)")
    p.add_argument("--clients", default="1,8", help="concurrent clients per load run (default: 1,8)")
    p.add_argument("--warmup", type=int, default=32, help="untimed requests before the runs (default: 32)")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2, help="torch threads in the replica and the server")
    p.add_argument("--deadline", type=int, default=420, help="seconds before the watchdog stops the run")
    p.add_argument("--skip-offramp-serve", action="store_true", help="only the Ray deployment")
    p.add_argument("--out", default=str(RESULTS / "ray_serve.json"))
    args = p.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    if not 1 <= args.requests <= 5000:
        p.error("--requests: expected 1..5000 (bounded load)")
    if args.model is None:
        found = [ROOT / "runs" / n for n in ("serve_model", "bench_runtime")]
        args.model = str(next((m for m in found if (m / "offramp.json").is_file()), found[0]))
    return args


def pick_policy(model: Any, texts: list[str]) -> Any:
    """maxprob at the threshold that gives 2x layer-count speed-up on ``texts`` (no labels used)."""
    from offramp.policies import get_policy
    from offramp.serve.runner import ModelRunner
    from offramp.simulate import threshold_for_speedup

    runner = ModelRunner(model, 64)
    outputs = runner.all_exits(texts)
    policy, _ = threshold_for_speedup(get_policy("maxprob"), outputs.logits, runner.costs, 2.0)
    return policy


def load(url: str, texts: list[str], clients: list[int], warmup: int, policy: Any, ref: Any) -> list[Run]:
    """Untimed warm-up, then one timed run per client count; each summarised against ``ref``, with the
    mean inputs per model call the server's own ``/metrics`` counted during the run."""
    asyncio.run(drive(url, texts[:warmup], 4))
    runs = []
    for n in clients:
        before = model_calls(url)
        out = asyncio.run(drive(url, texts, n))
        after = model_calls(url)
        mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
        run = asdict(summarise("early exit 2x", policy, n, out, ref, len(texts)))
        runs.append({**run, "mean_batch": round(mean_batch, 2)})
        print(json.dumps(runs[-1]), flush=True)
    return runs


def model_calls(url: str) -> tuple[float, float]:
    """(inputs, model calls) so far: the ``offramp_batch_size`` histogram of the server's ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("offramp_batch_size_"))
    return float(values["offramp_batch_size_sum"]), float(values["offramp_batch_size_count"])


def check_v2(url: str, name: str, texts: list[str], ref: Any) -> dict[str, Any]:
    """One KServe v2 ``infer`` request of ``texts``: labels and exit layers against ``ref``."""
    body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    response = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=60)
    response.raise_for_status()
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    return {
        "texts": len(texts),
        "label_id_agree": outputs["label_id"] == ref.predictions[: len(texts)].tolist(),
        "exit_layer_agree": outputs["exit_layer"] == ref.exit_layer[: len(texts)].tolist(),
    }


def run_ray(args: argparse.Namespace, texts: list[str], policy: Any, ref: Any) -> dict[str, Any]:
    """Local Ray, the deployment, the load and the v2 check; Serve and Ray shut down however it ends."""
    import ray
    from ray import serve

    from offramp.serve import ServeConfig
    from offramp.serve.ray_serve import build_deployment
    from offramp.serve.server import free_port

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServeConfig(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms)
        app = build_deployment(args.model, config=config, policy=policy, num_cpus=2, threads=args.threads)
        start = time.perf_counter()
        serve.run(app, name="offramp", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        ready = httpx.get(f"{url}/v2/health/ready", timeout=10).json()
        result = {"ray": ray.__version__, "deploy_s": round(time.perf_counter() - start, 1), "ready": ready}
        result["runs"] = load(url, texts, args.clients, args.warmup, policy, ref)
        result["v2"] = check_v2(url, config.name, texts[:16], ref)
        return result
    finally:
        serve.shutdown()
        ray.shutdown()


def run_offramp_serve(args: argparse.Namespace, texts: list[str], policy: Any, ref: Any) -> list[Run]:
    """The same load against ``offramp serve`` in a child process, same batching and threads."""
    flags = ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
             "--threads", str(args.threads)]  # fmt: skip
    log = ROOT / "runs" / "ray_serve_check.log"
    server = ServerProcess(args.model, flags, log)
    try:
        set_policy(server.url, policy)
        return load(server.url, texts, args.clients, args.warmup, policy, ref)
    finally:
        server.stop()
        log.unlink(missing_ok=True)


def network() -> str:
    """Whether this run had only a loopback interface (Ray's core servers listen on every interface)."""
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces == ["lo"]:
        return "a network namespace with only loopback (unshare -n)"
    return f"the host network ({', '.join(interfaces)})"


def watchdog(seconds: int) -> None:
    """Raise in the main thread after ``seconds``, so the run ends (through its ``finally`` blocks)."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"ray_serve_check: stopped by its watchdog after {seconds} s")

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)


def main() -> int:
    args = parse_args()
    watchdog(args.deadline)
    from offramp.cascade import load_any
    from offramp.data import load_glue
    from offramp.engine import EarlyExitEngine

    dev = load_glue("sst2", GLUE, "dev")
    texts = [dev.texts[i % len(dev)] for i in range(args.requests)]
    model = load_any(args.model)
    policy = pick_policy(model, texts)
    ref = EarlyExitEngine(model).predict(texts, policy=policy, batch_size=32)
    ray_result = run_ray(args, texts, policy, ref)
    serve_runs = [] if args.skip_offramp_serve else run_offramp_serve(args, texts, policy, ref)
    signal.alarm(0)
    report(args, policy, ray_result, serve_runs)
    ok = ray_result["v2"]["label_id_agree"] and ray_result["v2"]["exit_layer_agree"]
    runs = ray_result["runs"] + serve_runs
    ok = ok and all(r["errors"] == 0 and r["agreement"] == r["exit_agreement"] == 1.0 for r in runs)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


def report(args: argparse.Namespace, policy: Any, ray_result: dict[str, Any], serve_runs: list[Run]) -> None:
    """Write the JSON and Markdown results."""
    result = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "network": network(),
        "python": platform.python_version(),
        "model": os.path.relpath(args.model, ROOT),
        "policy": policy.to_config(),
        "threshold": float(policy.threshold),
        "settings": {
            k: getattr(args, k)
            for k in ("requests", "clients", "warmup", "max_batch_size", "max_wait_ms", "threads")
        },
        "ray": ray_result,
        "offramp_serve": {"runs": serve_runs},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    rows = [("Ray Serve deployment", r) for r in result["ray"]["runs"]]
    rows += [("offramp serve", r) for r in result["offramp_serve"]["runs"]]
    table = [
        "| server | clients | requests | req/s | p50 ms | p95 ms | p99 ms | errors | agree | exit agree "
        "| layer speed-up | inputs per model call |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        table.append(
            f"| {name} | {r['clients']} | {r['requests']} | {r['throughput']:.1f} | {r['p50_ms']:.1f} "
            f"| {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {r['agreement']:.4f} "
            f"| {r['exit_agreement']:.4f} | {r['layer_speedup']:.2f} | {r['mean_batch']:.2f} |"
        )
    ray, s, v2 = result["ray"], result["settings"], result["ray"]["v2"]
    threshold = result["threshold"]
    return "\n".join(
        [
            "# The Ray Serve deployment on a local Ray instance",
            "",
            f"Command: `{result['command']}` · {result['date']} · {result['machine']} (Ray, the replica, "
            f"Serve's proxy and the load generator share them) · Python {result['python']} · Ray "
            f"{ray['ray']} · model `{result['model']}` · network: {result['network']}.",
            "",
            f"`offramp.serve.ray_serve.build_deployment` on `ray.init(num_cpus=2)`: one replica (2 CPUs, "
            f"{s['threads']} torch threads), `@serve.batch(max_batch_size={s['max_batch_size']}, "
            f"batch_wait_timeout_s={s['max_wait_ms'] / 1000:g})`, Serve's HTTP proxy on 127.0.0.1. Policy: "
            f"maxprob, threshold {threshold:.4f} (2x layer-count speed-up on the sent texts, picked without "
            f"labels). Deployed in {ray['deploy_s']} s. One SST-2 dev sentence per `/predict` request, "
            f"{s['requests']} requests per run after {s['warmup']} untimed ones; `offramp serve` gets the "
            "same load with the same batching flags and threads, for scale.",
            "",
            *table,
            "",
            f"KServe v2 `infer` through the deployment, {v2['texts']} texts in one request: labels equal "
            f"`EarlyExitEngine.predict`: {v2['label_id_agree']}; exit layers: {v2['exit_layer_agree']}.",
            "",
            "Agreement compares every served label and exit layer with `EarlyExitEngine.predict` under the "
            "same policy. Inputs per model call: each server's own `offramp_batch_size` histogram "
            "(`/metrics`) over the run. Throughput here is a smoke-level number from one short run on two "
            "shared cores, not a benchmark of Ray: each request crosses Serve's proxy actor and the "
            "replica actor, which compete with the model and the load generator for the same two cores, "
            "so requests reach `@serve.batch` spread out and its batches stay smaller than the "
            "in-process batcher's.",
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
