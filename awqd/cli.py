"""The `awqd` command: serve, check-kernels, eval, quantize, synth."""

from pathlib import Path
from typing import Annotated

import typer

from awqd.config import EngineSettings, ModelSpec, ServeConfig
from awqd.errors import AwqdError, InvalidArgument
from awqd.log import configure_logging

app = typer.Typer(help="awqd: serve 4-bit AWQ models over gRPC on the kernels measured fastest for each GPU.")


@app.command()
def serve(
    listen: Annotated[str, typer.Option(envvar="AWQD_LISTEN", help="HOST:PORT to serve gRPC on")] = "0.0.0.0:50051",
    cache_dir: Annotated[
        Path, typer.Option(envvar="AWQD_CACHE_DIR", help="kernel decisions and the demo model live here")
    ] = Path("/var/cache/awqd"),
    model: Annotated[
        list[str] | None,
        typer.Option(
            envvar="AWQD_MODELS",
            help="NAME=PATH[@PLACEMENT] to host, PLACEMENT being a device (cuda:1), a list (cuda:0,cuda:2) or 'all' "
            "(one replica per GPU); repeatable (env: space-separated)",
        ),
    ] = None,
    cpu_devices: Annotated[
        int,
        typer.Option(
            envvar="AWQD_CPU_DEVICES",
            hidden=True,
            help="tests and development only: list the host CPU as N devices cpu:0..cpu:N-1, to run replicas",
        ),
    ] = 1,
    model_root: Annotated[
        Path | None,
        typer.Option(envvar="AWQD_MODEL_ROOT", help="model paths must lie under it [default: CACHE_DIR/models]"),
    ] = None,
    demo_model: Annotated[
        bool, typer.Option(envvar="AWQD_DEMO_MODEL", help="host the built-in demo model when no --model is given")
    ] = True,
    kernel: Annotated[
        str, typer.Option(envvar="AWQD_KERNEL", help="auto, or a kernel family or candidate forced daemon-wide")
    ] = "auto",
    selection_budget: Annotated[
        float, typer.Option(envvar="AWQD_SELECTION_BUDGET", help="seconds of on-boot kernel benchmarking per device")
    ] = 240.0,
    candidate_plugin: Annotated[
        list[str] | None,
        typer.Option(
            help="MODULE:CLASS kernel candidate to check and time with the built-ins; repeatable "
            "(also env AWQD_CANDIDATE_PLUGINS, comma-separated, and the awqd.candidates entry points)"
        ),
    ] = None,
    single_layout: Annotated[
        bool, typer.Option(envvar="AWQD_SINGLE_LAYOUT", help="hold one weight layout per model, not one per kernel")
    ] = False,
    grace_period: Annotated[
        float, typer.Option(envvar="AWQD_GRACE_PERIOD", help="seconds in-flight calls get to finish on SIGTERM")
    ] = 30.0,
    max_new_tokens: Annotated[
        int, typer.Option(envvar="AWQD_MAX_NEW_TOKENS", help="largest max_new_tokens a request may ask for")
    ] = 2048,
    max_workers: Annotated[
        int,
        typer.Option(
            envvar="AWQD_MAX_WORKERS",
            help="threads for the calls that block (LoadModel, UnloadModel, Describe, Benchmark steps) and for "
            "tokenizing prompts; streams need none",
        ),
    ] = 32,
    feature_file: Annotated[
        Path | None,
        typer.Option(
            envvar="AWQD_FEATURE_FILE",
            help="after kernel selection, write node labels here for Node Feature Discovery "
            "(e.g. /etc/kubernetes/node-feature-discovery/features.d/awqd)",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="AWQD_LOG_LEVEL")] = "info",
    log_format: Annotated[str, typer.Option(envvar="AWQD_LOG_FORMAT", help="json or console")] = "json",
    metrics_listen: Annotated[
        str,
        typer.Option(envvar="AWQD_METRICS_LISTEN", help="HOST:PORT for Prometheus /metrics (plain HTTP); '' or off"),
    ] = "0.0.0.0:9400",
    tls_cert: Annotated[
        Path | None, typer.Option(envvar="AWQD_TLS_CERT", help="PEM certificate chain: serve TLS (re-read on change)")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(envvar="AWQD_TLS_KEY", help="PEM private key of --tls-cert")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(envvar="AWQD_TLS_CLIENT_CA", help="PEM CA bundle: require client certificates it signed (mTLS)"),
    ] = None,
    auth_token: Annotated[
        str | None,
        typer.Option(envvar="AWQD_AUTH_TOKEN", help="bearer token for Describe, Generate and ListModels"),
    ] = None,
    auth_token_file: Annotated[
        Path | None, typer.Option(envvar="AWQD_AUTH_TOKEN_FILE", help="file holding the --auth-token")
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(envvar="AWQD_ADMIN_TOKEN", help="bearer token for LoadModel, UnloadModel, Benchmark (and all)"),
    ] = None,
    admin_token_file: Annotated[
        Path | None, typer.Option(envvar="AWQD_ADMIN_TOKEN_FILE", help="file holding the --admin-token")
    ] = None,
    reflection: Annotated[
        bool, typer.Option(envvar="AWQD_REFLECTION", help="serve gRPC server reflection (unauthenticated)")
    ] = True,
    max_message_bytes: Annotated[
        int, typer.Option(envvar="AWQD_MAX_MESSAGE_BYTES", help="largest gRPC message sent or received")
    ] = 64 * 1024 * 1024,
    max_concurrent_streams: Annotated[
        int,
        typer.Option(
            envvar="AWQD_MAX_CONCURRENT_STREAMS",
            help="Generate and Benchmark streams in flight at once; more get RESOURCE_EXHAUSTED",
        ),
    ] = 4096,
    frontend_processes: Annotated[
        str,
        typer.Option(
            envvar="AWQD_FRONTEND_PROCESSES",
            help="processes that accept --listen's connections (sharing its port) and relay Generate streams to the "
            "engine, so hundreds of calls ending at once do not queue on one loop; 0 serves on the engine's own "
            "loop; auto: 2 on a node with a GPU, 0 without",
        ),
    ] = "auto",
    max_prompt_tokens: Annotated[
        int, typer.Option(envvar="AWQD_MAX_PROMPT_TOKENS", help="longest prompt, in tokens, a request may send")
    ] = 8192,
    kv_cache_fraction: Annotated[
        float,
        typer.Option(
            envvar="AWQD_KV_CACHE_FRACTION",
            help="share of a GPU's free memory (after the weights) each model's static KV cache takes at load",
        ),
    ] = 0.9,
    kv_cache_tokens: Annotated[
        int, typer.Option(envvar="AWQD_KV_CACHE_TOKENS", help="KV-cache capacity in tokens per model on the CPU")
    ] = 16384,
    max_batch_size: Annotated[
        int,
        typer.Option(envvar="AWQD_MAX_BATCH_SIZE", help="sequences a model decodes together in one step"),
    ] = EngineSettings.max_batch_size,
    max_queued_requests: Annotated[
        int,
        typer.Option(
            envvar="AWQD_MAX_QUEUED_REQUESTS",
            help="requests waiting for room in the KV cache, per model; more get RESOURCE_EXHAUSTED with a retry hint",
        ),
    ] = 1024,
    queue_timeout: Annotated[
        float,
        typer.Option(
            envvar="AWQD_QUEUE_TIMEOUT", help="seconds a request may wait for KV-cache room before RESOURCE_EXHAUSTED"
        ),
    ] = 30.0,
    prefill_tokens_per_step: Annotated[
        int,
        typer.Option(
            envvar="AWQD_PREFILL_TOKENS_PER_STEP",
            min=1,
            help="prompt tokens a model prefills together at one step boundary (a longer prompt goes alone); lower "
            "shortens the pause a prefill puts on running streams, higher admits a burst of requests sooner",
        ),
    ] = 8192,
    max_decode_stall_ms: Annotated[
        float,
        typer.Option(
            envvar="AWQD_MAX_DECODE_STALL_MS",
            help="while more of a burst of requests could join, prefill them before the running streams' next token, "
            "for up to this long (their first tokens come sooner; the running streams wait); 0 decodes at every "
            "step boundary",
        ),
    ] = 500.0,
    preemption: Annotated[
        str,
        typer.Option(
            envvar="AWQD_PREEMPTION",
            help="when the KV cache runs out of blocks, the newest running request is preempted: swap its blocks to "
            "host memory (it resumes decoding with the same bits) or recompute them by prefilling it again; swap "
            "falls back to recompute when --swap-space-gib is full",
        ),
    ] = "swap",
    swap_space_gib: Annotated[
        float,
        typer.Option(
            envvar="AWQD_SWAP_SPACE_GIB",
            help="host memory per model for swapped-out KV blocks (pinned on GPUs), capped at the KV cache's size",
        ),
    ] = 4.0,
    cuda_graphs: Annotated[
        bool, typer.Option(envvar="AWQD_CUDA_GRAPHS", help="replay decode steps as CUDA graphs on GPUs")
    ] = True,
    overlap_decode: Annotated[
        bool,
        typer.Option(
            envvar="AWQD_OVERLAP_DECODE",
            help="launch each decode step before streaming the previous step's tokens, so the host's per-token work "
            "(detokenizing, stop strings, messages) runs while the GPU computes; the same tokens either way (bit "
            "for bit with --batch-invariant); off is a benchmark's baseline",
        ),
    ] = True,
    batch_invariant: Annotated[
        bool,
        typer.Option(
            envvar="AWQD_BATCH_INVARIANT",
            help="GPU: greedy tokens never depend on what a request is batched with (one fixed-tile kernel for "
            "every batch size; slower than the per-bucket decisions)",
        ),
    ] = False,
    prefix_caching: Annotated[
        bool,
        typer.Option(
            envvar="AWQD_PREFIX_CACHING",
            help="prompts that start with the same tokens as an earlier one share its KV-cache blocks (whole blocks "
            "of 16) and skip their prefill; off with --batch-invariant",
        ),
    ] = True,
) -> None:
    """Serve the gRPC API until SIGTERM or SIGINT."""
    from awqd.server.app import serve as run_server
    from awqd.server.auth import resolve_token
    from awqd.server.metrics import parse_listen

    configure_logging(log_level, log_format)
    try:
        parse_listen(metrics_listen)
        config = ServeConfig(
            listen=listen,
            cache_dir=cache_dir,
            model_root=model_root,
            models=tuple(ModelSpec.parse(spec) for item in model or () for spec in item.split()),
            demo_model=demo_model,
            cpu_devices=cpu_devices,
            kernel=kernel,
            selection_budget_s=selection_budget,
            candidate_plugins=tuple(plugin_specs(candidate_plugin)),
            single_layout=single_layout,
            grace_period_s=grace_period,
            max_new_tokens_cap=max_new_tokens,
            max_workers=max_workers,
            feature_file=feature_file,
            log_level=log_level,
            log_format=log_format,
            metrics_listen=metrics_listen,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            auth_token=resolve_token("--auth-token", auth_token, auth_token_file),
            admin_token=resolve_token("--admin-token", admin_token, admin_token_file),
            reflection=reflection,
            max_message_bytes=max_message_bytes,
            max_concurrent_streams=max_concurrent_streams,
            frontend_processes=parse_frontend_processes(frontend_processes),
            max_prompt_tokens=max_prompt_tokens,
            engine=EngineSettings(
                kv_cache_fraction=kv_cache_fraction,
                kv_cache_tokens=kv_cache_tokens,
                max_batch_size=max_batch_size,
                max_queued_requests=max_queued_requests,
                queue_timeout_s=queue_timeout,
                prefill_tokens_per_step=prefill_tokens_per_step,
                max_decode_stall_ms=max_decode_stall_ms,
                preemption=preemption,
                swap_space_gib=swap_space_gib,
                cuda_graphs=cuda_graphs,
                overlap_decode=overlap_decode,
                batch_invariant=batch_invariant,
                prefix_caching=prefix_caching,
            ),
        )
    except AwqdError as error:
        raise typer.BadParameter(str(error)) from None
    raise typer.Exit(run_server(config))


def parse_frontend_processes(flag: str) -> int | None:
    """--frontend-processes: a count, or None for auto (ServeConfig.frontend_count decides once devices are known)."""
    if flag == "auto":
        return None
    try:
        return int(flag)
    except ValueError:
        raise InvalidArgument("--frontend-processes", f"must be a number of processes or auto, got {flag!r}") from None


def plugin_specs(flags: list[str] | None) -> list[str]:
    from awqd.kernels.plugins import specs_from

    return specs_from(flags or ())


@app.command("check-kernels")
def check_kernels(
    device: Annotated[str, typer.Option(help="torch device to check: cpu, cuda or cuda:N")] = "cuda:0",
    arch: Annotated[str | None, typer.Option(help="layer shapes of tiny, llama-2-7b, llama-3-8b or mistral-7b")] = None,
    model_path: Annotated[Path | None, typer.Option(help="take the layer shapes from this AWQ checkpoint")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print JSON instead of the table")] = False,
    candidate_plugin: Annotated[
        list[str] | None, typer.Option(help="MODULE:CLASS plugin candidate; repeatable (and as for serve)")
    ] = None,
    budget: Annotated[float, typer.Option(help="seconds of selection, as --selection-budget")] = 240.0,
    graph_batch: Annotated[
        int, typer.Option(help="largest decode batch replayed as a CUDA graph (serve's --max-batch-size); 0: none")
    ] = EngineSettings.max_batch_size,
    cache_dir: Annotated[
        Path | None, typer.Option(help="also write the decisions to this cache directory (default: none)")
    ] = None,
) -> None:
    """Check and time every kernel candidate on one device, isolated as at boot, and print why each was chosen
    or rejected per batch bucket. Starts no server."""
    import json

    from awqd.check_kernels import check_kernels as run_check
    from awqd.check_kernels import summary, table
    from awqd.kernels import plugins, registry

    configure_logging("warning", "console")
    if arch is not None and model_path is not None:
        raise typer.BadParameter("give --arch or --model-path, not both")
    try:
        plugins.activate(plugin_specs(candidate_plugin), registry.CANDIDATES)
        decisions, shapes = run_check(device, arch, model_path, budget, graph_batch, cache_dir)
    except AwqdError as error:
        typer.echo(f"awqd check-kernels: error: {error}", err=True)
        raise typer.Exit(2) from None
    if json_output:
        typer.echo(json.dumps(summary(decisions, shapes), indent=1))
    else:
        typer.echo(table(decisions, shapes))
    raise typer.Exit(1 if decisions.degraded else 0)


@app.command("eval")
def eval_command(
    model_path: Annotated[Path, typer.Option(help="AWQ or compressed-tensors checkpoint directory")],
    text_file: Annotated[Path, typer.Option(help="UTF-8 text to score (at most 1 MiB, 32768 tokens)")],
    device: Annotated[str, typer.Option(help="torch device [default: cuda:0 if available, else cpu]")] = "",
    kernels: Annotated[
        str, typer.Option(metavar="NAME,...", help="candidates or families [default: all eligible]")
    ] = "",
    window: Annotated[int, typer.Option(min=0, help="tokens per window; 0: min(1024, the model's context)")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Perplexity of a checkpoint on a text with each kernel pinned, against the pure-torch reference (offline)."""
    import dataclasses
    import json

    from awqd.benchmark.evaluate import evaluate, table

    configure_logging("warning", "console")
    names = tuple(name.strip() for name in kernels.split(",") if name.strip())
    try:
        evaluation = evaluate(model_path, text_file.read_bytes(), device, names, window)
    except (AwqdError, OSError) as error:
        typer.echo(f"awqd eval: error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(dataclasses.asdict(evaluation), indent=1) if json_output else table(evaluation))
    raise typer.Exit(0 if all(row.within_bound for row in evaluation.rows) else 1)


@app.command()
def quantize(
    model: Annotated[Path, typer.Option(help="directory of the fp16 transformers model to quantize")],
    calib: Annotated[Path, typer.Option(help="calibration text: one sample per line, or JSONL with a 'text' field")],
    out: Annotated[Path, typer.Option(help="directory for the AWQ checkpoint (must not exist or be empty)")],
    w_bit: Annotated[int, typer.Option(help="bits per weight; AWQ kernels support 4")] = 4,
    group_size: Annotated[int, typer.Option(help="input channels per scale and zero")] = 128,
    zero_point: Annotated[bool, typer.Option(help="store an asymmetric zero point")] = True,
    version: Annotated[str, typer.Option(help="packing to write: GEMM or GEMV")] = "GEMM",
) -> None:
    """Quantize a model with AutoAWQ on domain-appropriate calibration data, and report activation salience."""
    from rich.console import Console
    from rich.table import Table

    from awqd.quantize.autoawq import quantize as run_quantize
    from awqd.quantize.calibration import read_calibration

    configure_logging("warning", "console")
    try:
        report = run_quantize(
            model,
            read_calibration(calib),
            out,
            w_bit=w_bit,
            group_size=group_size,
            zero_point=zero_point,
            version=version,
        )
    except AwqdError as error:
        typer.echo(f"awqd quantize: error: {error}", err=True)
        raise typer.Exit(2) from None
    table = Table(title=f"{len(report.layers)} layers quantized in {report.seconds:.1f} s on {report.device}")
    for column in ("layer", "top 1% channels' share of |x|", "max / median channel", "most salient channels"):
        table.add_column(column)
    for layer, salience in report.salience.items():
        ratio = f"{salience.max_median_ratio:.1f}x" if salience.max_median_ratio is not None else "-"
        table.add_row(
            layer, f"{salience.top_channels_share:.1%}", ratio, ", ".join(map(str, salience.top_channels[:4]))
        )
    console = Console()
    console.print(table)
    console.print(f"checkpoint: {out} ({report.version}, w_bit {report.w_bit}, group {report.group_size})")


@app.command()
def synth(
    arch: Annotated[str, typer.Option(help="tiny, llama-2-7b, llama-3-8b or mistral-7b")],
    out: Annotated[Path, typer.Option(help="directory for the synthetic checkpoint")],
    version: Annotated[str, typer.Option(help="packing to write: GEMM or GEMV")] = "GEMM",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Write an AWQ checkpoint with a real architecture's shapes and random int4 weights, for benchmarks."""
    import time

    from awqd.models.synth import synthesize

    configure_logging("warning", "console")
    started = time.perf_counter()
    try:
        path = synthesize(arch, out, version=version, seed=seed)
    except AwqdError as error:
        typer.echo(f"awqd synth: error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {arch} ({version}) to {path} in {time.perf_counter() - started:.1f} s")


def main() -> None:
    app()
