"""Boots `python -m awqd serve` from a given code root and runs bench/grpc_concurrency.py against it.

    python3 bench/concurrency_check.py --code-root DIR --work WORK --out OUT [--before] [--dry-run]
        [--compare-overlap | --variant NAME="FLAGS" ...] [--levels L1,L2] [--hold N] [-- SERVE_FLAGS...]

--code-root is the awqd checkout the daemon runs (its PYTHONPATH): this one, or a `git worktree` of an older
commit for the "before" numbers. The client (bench/grpc_concurrency.py) always comes from this checkout, so both
runs are measured by the same script. WORK holds the synthetic Llama-2-7B-shaped checkpoint (made once with
`awqd synth`) and the daemon's cache directory: a second run on the same WORK re-validates the first run's kernel
decisions instead of measuring again, so both runs serve on the same kernels.

--before raises the old server's caps so that it can take the levels at all: its streams each hold a gRPC worker
thread, and --max-concurrent-streams had to stay below --max-workers.

--variant NAME="FLAGS" (repeatable) boots the daemon once per variant in one invocation, in the order given, each
with its extra `awqd serve` flags, into OUT/NAME/, and writes OUT/compare.md: the same levels side by side. The
first boot measures the kernel decisions into WORK's cache, and the later ones re-validate them, so every variant
serves on the same kernels. --compare-overlap is the two variants --no-overlap-decode (OUT/no-overlap/) and
overlapped decode (OUT/overlap/); its default levels are 64,256 with no held round, so that both boots fit one
10-minute GPU command on a WORK whose kernel decisions are measured already.

--dry-run is the CPU run (a minute or two): the embedded demo model, levels 1,8,32, 32+32 tokens, 64 held streams.
--prompt-tokens, --new-tokens and --shared-prefix-tokens (the first prompt ids, the same in every stream) change the
requests; with --variant cached="" --variant uncached="--no-prefix-caching" the two boots compare the prefix cache.
Writes OUT/grpc-concurrency.{json,md} and OUT/daemon.log (under OUT/NAME/ per variant); stops the daemon with
SIGTERM, as an operator would.
"""

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from warmup_check import free_port  # noqa: E402

BEFORE_CAPS = ("--max-workers", "1100", "--max-concurrent-streams", "1050", "--max-queued-requests", "1024")


def daemon_env(code_root: Path) -> dict[str, str]:
    paths = [str(code_root), str(code_root / "clients" / "python" / "src"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}


def synthesize(code_root: Path, checkpoint: Path) -> None:
    if (checkpoint / "config.json").exists():
        return
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "awqd", "synth", "--arch", "llama-2-7b", "--out", str(checkpoint)],
        check=True, env=daemon_env(code_root), cwd=code_root, timeout=600,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code-root", type=Path, required=True, help="the awqd checkout the daemon runs")
    parser.add_argument("--work", type=Path, required=True, help="checkpoint and cache directory, kept between runs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--before", action="store_true", help="the old thread-per-stream server: raise its caps")
    parser.add_argument("--dry-run", action="store_true", help="CPU: the demo model, small levels and lengths")
    parser.add_argument("--compare-overlap", action="store_true", help="two daemons: --no-overlap-decode, then on")
    parser.add_argument(
        "--variant", action="append", default=[], metavar='NAME="FLAGS"', help="one daemon per variant, in order"
    )
    parser.add_argument("--levels", help="comma-separated concurrent stream counts (default: by mode)")
    parser.add_argument("--hold", type=int, help="streams held at once after the levels (default: by mode; 0: none)")
    parser.add_argument("--prompt-tokens", type=int, help="each stream's prompt (default: by mode)")
    parser.add_argument("--new-tokens", type=int, help="each stream's generation (default: by mode)")
    parser.add_argument("--shared-prefix-tokens", type=int, default=0, help="prompt ids the same in every stream")
    # Together under the GPU machine's 10 minutes per command: a cold boot takes ~4 min, the levels ~1-2 min.
    parser.add_argument("--client-processes", type=int, default=4, help="client processes the streams are dealt to")
    parser.add_argument("--boot-timeout", type=float, default=360.0, help="seconds to wait for SERVING")
    parser.add_argument("--client-timeout", type=float, default=150.0, help="seconds the client may run once SERVING")
    parser.add_argument("--call-timeout", type=float, default=120.0, help="each call's deadline, seconds")
    parser.add_argument("serve_args", nargs="*", help="more `awqd serve` flags, after --")
    args = parser.parse_args()
    code_root, work = args.code_root.resolve(), args.work.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    port, metrics_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    serve = [
        sys.executable, "-m", "awqd", "serve", "--listen", target, "--cache-dir", str(work / "cache"),
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
    ]  # fmt: skip
    if args.dry_run:
        model = "awqd-demo"
        serve += ["--selection-budget", "3"]
        levels, hold, prompt, new = "1,8,32", 64, 32, 32
    else:
        model = "synth"
        synthesize(code_root, work / "models" / "llama-2-7b")
        serve += ["--model-root", str(work / "models"), "--model", f"{model}=llama-2-7b"]
        levels, hold, prompt, new = "1,32,56,64,128,256", 1000, 128, 128
    client = ["--prompt-tokens", str(args.prompt_tokens or prompt), "--new-tokens", str(args.new_tokens or new)]
    client += ["--shared-prefix-tokens", str(args.shared_prefix_tokens)]
    if args.compare_overlap:
        levels, hold = ("8,32" if args.dry_run else "64,256"), 0
    client += ["--processes", str(args.client_processes), "--metrics", f"http://127.0.0.1:{metrics_port}/metrics"]
    client += ["--levels", args.levels or levels, "--hold", str(hold if args.hold is None else args.hold)]
    serve += [*(BEFORE_CAPS if args.before else ()), *args.serve_args]
    variants = dict(variant.split("=", 1) for variant in args.variant)
    if args.compare_overlap:
        variants = {"no-overlap": "--no-overlap-decode", "overlap": ""}
    if not variants:
        return run_daemon(args, code_root, serve, model, client, args.out)
    codes = {
        name: run_daemon(args, code_root, [*serve, *shlex.split(flags)], model, client, args.out / name)
        for name, flags in variants.items()
    }
    (args.out / "compare.md").write_text(comparison(args.out, variants))
    print((args.out / "compare.md").read_text())
    return max(codes.values())


def run_daemon(args, code_root: Path, serve: list[str], model: str, client: list[str], out: Path) -> int:
    """Boots the daemon, runs the client against it into `out`, stops the daemon; 0 when both ended cleanly."""
    out.mkdir(parents=True, exist_ok=True)
    target = serve[serve.index("--listen") + 1]
    log_path = out / "daemon.log"
    with log_path.open("w") as log:
        env = daemon_env(code_root)
        daemon = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=code_root)
        try:
            started = time.perf_counter()
            result = subprocess.run(
                [
                    sys.executable, str(BENCH / "grpc_concurrency.py"), "--target", target, "--model", model,
                    "--warmup", "--wait-ready", str(args.boot_timeout), "--timeout", str(args.call_timeout),
                    "--out", str(out), *client,
                ],
                timeout=args.boot_timeout + args.client_timeout, check=False,
            )  # fmt: skip
            print(f"concurrency_check: client exited {result.returncode} after {time.perf_counter() - started:.0f} s")
        except subprocess.TimeoutExpired:
            print("concurrency_check: the client ran out of time; what it measured is in --out", file=sys.stderr)
            result = None
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait(timeout=30)
    print(f"concurrency_check: daemon exited {daemon.returncode}; its log: {log_path}")
    return 0 if result is not None and result.returncode == 0 and daemon.returncode == 0 else 1


def comparison(out: Path, variants: dict[str, str]) -> str:
    """One table of every variant's levels, in the order they ran."""
    columns = (
        "tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "server_ttft_p99_ms", "ttft_client_minus_server_p99_ms",
        "inter_token_p50_ms", "inter_token_p99_ms", "server_ms_per_token", "overhead_us_per_token",
        "server_lag_first_ms", "cached_prompt_share", "codes",
    )  # fmt: skip
    lines = [
        "# The same daemon, model and levels, one boot per variant",
        "",
        *(f"- {name}: `{flags or '(the defaults)'}`" for name, flags in variants.items()),
        "",
        "| streams | variant | aggregate tok/s | TTFT p50 ms | TTFT p99 ms | server TTFT p99 ms | client - server "
        "TTFT p99 ms | inter-token p50 ms | inter-token p99 ms | server ms/token | overhead µs/token | server loop "
        "lag at first token ms | prompt share cached | statuses |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    results = {}
    for run in variants:
        path = out / run / "grpc-concurrency.json"
        results[run] = json.loads(path.read_text()) if path.exists() else {"levels": [], "errors": ["no results"]}
    rounds = max((len(data["levels"]) for data in results.values()), default=0)
    for index in range(rounds):  # a level given twice (--levels 1,256,256) is two rounds
        for run, data in results.items():
            row = data["levels"][index] if index < len(data["levels"]) else None
            cells = [str(row.get(column, "-")) for column in columns] if row else ["-"] * len(columns)
            lines.append(f"| {row['level'] if row else '-'} | {run} | {' | '.join(cells)} |")
    lines += [f"- **{run} error:** {error}" for run, data in results.items() for error in data.get("errors", [])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
