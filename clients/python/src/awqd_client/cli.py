"""awqctl: inspect and drive one awqd daemon from the shell.

Failures print one line, `awqctl: error: CODE: message`, on stderr and exit 2 for a bad request, 1 otherwise;
Ctrl-C exits 130. With --json, stdout carries only JSON (snake_case field names), so scripts can parse it.
"""

import sys
from collections.abc import Sequence
from contextlib import closing
from enum import Enum
from pathlib import Path
from typing import Annotated

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import Progress
from rich.text import Text

from awqd_client import render
from awqd_client.client import AwqdClient
from awqd_client.errors import AwqdError
from awqd_client.plot import PlotUnavailable, plot_kernel_latencies, require_matplotlib
from awqd_client.v1 import awqd_pb2

# Statuses that mean the command line asked for something wrong rather than the node failing.
_USAGE_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)

app = typer.Typer(
    name="awqctl",
    help="Inspect and drive an awqd daemon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the response as JSON instead of tables.")]


def to_json(message: Message, indent: int | None = 2) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=indent)


@app.callback()
def options(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Option(envvar="AWQCTL_TARGET", metavar="HOST:PORT", help="awqd's gRPC address.")
    ] = "localhost:50051",
    timeout: Annotated[
        float,
        typer.Option(
            envvar="AWQCTL_TIMEOUT",
            min=0.1,
            metavar="SECONDS",
            help="Deadline of quick calls; load and generate wait this long to connect, then run unbounded.",
        ),
    ] = 10.0,
    token: Annotated[
        str | None,
        typer.Option(envvar="AWQCTL_TOKEN", help="Bearer token for a daemon started with --auth-token/--admin-token."),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(envvar="AWQCTL_TOKEN_FILE", help="File holding the bearer token.")
    ] = None,
    tls: Annotated[
        bool, typer.Option("--tls", envvar="AWQCTL_TLS", help="Use TLS, trusting the system's CA certificates.")
    ] = False,
    tls_ca: Annotated[
        Path | None,
        typer.Option(envvar="AWQCTL_TLS_CA", help="PEM CA bundle to verify the daemon with (implies --tls)."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(envvar="AWQCTL_TLS_CERT", help="PEM client certificate for mTLS (implies --tls).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(envvar="AWQCTL_TLS_KEY", help="PEM key of --tls-cert.")] = None,
    tls_server_name: Annotated[
        str | None,
        typer.Option(envvar="AWQCTL_TLS_SERVER_NAME", help="Name the daemon's certificate must carry, if not HOST."),
    ] = None,
) -> None:
    if token and token_file:
        raise AwqdError(grpc.StatusCode.INVALID_ARGUMENT, "--token: give --token or --token-file, not both")
    if token_file is not None:
        token = _read_option_file("--token-file", token_file).decode(errors="replace").strip()
        if not token:
            raise AwqdError(grpc.StatusCode.INVALID_ARGUMENT, f"--token-file: {token_file} is empty")
    credentials = None
    if tls or tls_ca or tls_cert or tls_key:
        credentials = _tls_credentials(tls_ca, tls_cert, tls_key)
    # The channel connects lazily, on the first call.
    client = AwqdClient(
        target, timeout=timeout, credentials=credentials, token=token or None, server_name=tls_server_name
    )
    ctx.call_on_close(client.close)
    ctx.obj = client


def _tls_credentials(ca: Path | None, cert: Path | None, key: Path | None) -> grpc.ChannelCredentials:
    if (cert is None) != (key is None):
        raise AwqdError(grpc.StatusCode.INVALID_ARGUMENT, "--tls-cert/--tls-key: a client certificate needs both")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_option_file("--tls-ca", ca) if ca else None,
        private_key=_read_option_file("--tls-key", key) if key else None,
        certificate_chain=_read_option_file("--tls-cert", cert) if cert else None,
    )


def _read_option_file(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise AwqdError(grpc.StatusCode.INVALID_ARGUMENT, f"{flag}: cannot read {path}: {error.strerror}") from None


@app.command()
def describe(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """The node, its devices with kernel candidates and decisions, and the hosted models."""
    response = _client(ctx).describe()
    if json_output:
        print(to_json(response))
    else:
        render.print_describe(Console(), response)


@app.command()
def models(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """The hosted models in every state."""
    hosted = _client(ctx).list_models()
    if json_output:
        print(to_json(awqd_pb2.ListModelsResponse(models=hosted)))
    else:
        Console().print(render.models_table(hosted))


@app.command()
def load(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The name requests will use.")],
    path: Annotated[str, typer.Argument(help="Checkpoint directory, inside the daemon's model root.")],
    device: Annotated[
        str,
        typer.Option(help='Placement: "cuda:0", "cuda:0,cuda:2" or "all" (a replica each); default GPU 0 or CPU.'),
    ] = "",
    kernel: Annotated[str, typer.Option(help='"auto", a family (gemm, gemv, gemv_fast) or a candidate.')] = "auto",
    json_output: JsonFlag = False,
) -> None:
    """Load an AWQ checkpoint; returns once the model is READY."""
    model = _client(ctx).load_model(name, path, device=device, kernel=kernel)
    print(to_json(model) if json_output else render.loaded_line(model))


@app.command()
def unload(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The hosted model's name, or MODEL@DEVICE for one replica.")],
) -> None:
    """Unload a model and free its memory."""
    _client(ctx).unload_model(name)
    print(f"unloaded {name}")


@app.command()
def generate(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="The prompt text.")],
    model: Annotated[str | None, typer.Option(help="Hosted model; default: the only READY one.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 128,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 is greedy.")] = 0.0,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Nucleus sampling mass.")] = None,
    top_k: Annotated[int, typer.Option(min=0, help="Keep the k most likely tokens; 0: no limit.")] = 0,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Sampling seed; the text repeats exactly on a daemon run with --batch-invariant (otherwise "
            "batching can flip a near-tie).",
        ),
    ] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop at this string (repeatable).")] = None,
    kernel: Annotated[str, typer.Option(help='"auto", gemm, gemv, gemv_fast or a candidate name.')] = "auto",
    cache_salt: Annotated[
        str, typer.Option(help="Share cached prompt blocks only with requests of the same salt (one per tenant).")
    ] = "",
    json_output: Annotated[bool, typer.Option("--json", help="Print each stream message as one JSON line.")] = False,
) -> None:
    """Stream generated text to stdout; a one-line summary follows on stderr."""
    client = _client(ctx)
    stream = client.generate(
        model or _only_ready_model(client),
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=stop or (),
        kernel=kernel,
        cache_salt=cache_salt,
    )
    completion: awqd_pb2.Completion | None = None
    last_text = "\n"
    with closing(stream):
        for response in stream:
            if json_output:
                print(to_json(response, indent=None), flush=True)
            elif response.text:
                sys.stdout.write(response.text)
                sys.stdout.flush()  # show each delta as it arrives
                last_text = response.text
            if response.HasField("completion"):
                completion = response.completion
    if json_output:
        return
    if not last_text.endswith("\n"):
        sys.stdout.write("\n")
    if completion is not None:
        Console(stderr=True).print(Text(render.completion_summary(completion), style="dim"), soft_wrap=True)


@app.command()
def health(
    ctx: typer.Context, service: Annotated[str, typer.Option(help='grpc.health.v1 service; "" is the daemon.')] = ""
) -> None:
    """Print SERVING or NOT_SERVING; exit 0 only when SERVING."""
    status = _client(ctx).health(service)
    print(status)
    if status != "SERVING":
        raise typer.Exit(1)


class BenchMode(str, Enum):
    kernel = "kernel"
    single_query = "single-query"
    batch_sweep = "batch-sweep"
    quality = "quality"


BENCH_MODES = {
    BenchMode.kernel: awqd_pb2.BENCHMARK_MODE_KERNEL,
    BenchMode.single_query: awqd_pb2.BENCHMARK_MODE_SINGLE_QUERY,
    BenchMode.batch_sweep: awqd_pb2.BENCHMARK_MODE_BATCH_SWEEP,
    BenchMode.quality: awqd_pb2.BENCHMARK_MODE_QUALITY,
}


@app.command()
def bench(
    ctx: typer.Context,
    mode: Annotated[BenchMode, typer.Option(help="What to measure.")],
    model: Annotated[
        str,
        typer.Option(
            help="Hosted model (single-query, batch-sweep, quality: default the only READY one; or kernel mode on "
            "its shapes)."
        ),
    ] = "",
    arch: Annotated[str, typer.Option(help='Kernel mode on a named architecture\'s shapes, e.g. "llama-2-7b".')] = "",
    device_index: Annotated[int | None, typer.Option(min=0, help="Device index from describe.")] = None,
    prompt_tokens: Annotated[int, typer.Option(min=1, help="Single-query and batch-sweep prompt length.")] = 128,
    new_tokens: Annotated[
        int, typer.Option(min=1, help="Single-query and batch-sweep tokens generated per sequence.")
    ] = 128,
    batch: Annotated[
        str,
        typer.Option(metavar="N,N,...", help="Kernel-mode batch sizes in tokens; batch-sweep concurrent sequences."),
    ] = "",
    kernels: Annotated[str, typer.Option(metavar="NAME,...", help="Candidates or families; default: all.")] = "",
    iterations: Annotated[int, typer.Option(min=0, help="Timed iterations or runs; 0: the daemon's default.")] = 0,
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up iterations or runs; 0: the daemon's default.")] = 0,
    text_file: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Quality: the UTF-8 text to score (at most 1 MiB).")
    ] = None,
    window: Annotated[int, typer.Option(min=0, help="Quality: tokens per window; 0: the daemon's default.")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print only the report, as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(metavar="FILE.png", help="Draw latency vs batch size (kernel).")] = None,
) -> None:
    """Run a benchmark on the daemon: progress on stderr, then the report."""
    if plot is not None:
        if mode is not BenchMode.kernel:
            raise typer.BadParameter("draws kernel latencies: use it with --mode kernel", param_hint="--plot")
        _require_plotting()
    generates = mode in (BenchMode.single_query, BenchMode.batch_sweep)
    if (mode is BenchMode.quality) != (text_file is not None):
        raise typer.BadParameter("names the text of --mode quality, and only of it", param_hint="--text-file")
    client = _client(ctx)
    if (generates or mode is BenchMode.quality) and not model:
        model = _only_ready_model(client)  # as `awqctl generate` does
    request = awqd_pb2.BenchmarkRequest(
        mode=BENCH_MODES[mode],
        model=model,
        architecture=arch,
        device_index=device_index,
        kernels=_names(kernels),
        batch_sizes=[_batch_size(size) for size in _names(batch)],
        prompt_tokens=prompt_tokens if generates else 0,
        new_tokens=new_tokens if generates else 0,
        iterations=iterations,
        warmup_iterations=warmup,
        text=text_file.read_bytes() if text_file else b"",
        window_tokens=window,
    )
    report = _run_benchmark(client, request)
    if json_output:
        print(to_json(report))
    else:
        render.print_benchmark(Console(), report)
    if plot is not None:
        plot_kernel_latencies(report, plot)
        if not json_output:
            print(f"plot written to {plot}")


def _run_benchmark(client: AwqdClient, request: awqd_pb2.BenchmarkRequest) -> awqd_pb2.BenchmarkReport:
    """Streams the benchmark with a progress bar on stderr; returns the report."""
    stream = client.benchmark(request)
    report = None
    console = Console(stderr=True)
    # A bar only where someone watches: piped stderr stays free of redraws, and errors stay one line.
    with closing(stream), Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("waiting for the daemon", total=None)
        for response in stream:
            if response.HasField("progress"):
                event = response.progress
                progress.update(
                    task, completed=event.completed, total=event.total, description=f"{event.stage}: {event.message}"
                )
            elif response.HasField("report"):
                report = response.report
    if report is None:
        raise AwqdError(grpc.StatusCode.INTERNAL, f"awqd at {client.target} ended the benchmark without a report")
    return report


def _require_plotting() -> None:
    try:
        require_matplotlib()
    except PlotUnavailable as error:
        print(f"awqctl: error: {error}", file=sys.stderr)
        raise typer.Exit(1) from None


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _batch_size(text: str) -> int:
    if not text.isdigit() or int(text) >= 2**32:
        raise typer.BadParameter(f"{text!r} is not a whole number of tokens", param_hint="--batch")
    return int(text)


def _client(ctx: typer.Context) -> AwqdClient:
    return ctx.obj


def _only_ready_model(client: AwqdClient) -> str:
    ready = [model.name for model in client.list_models() if model.state == awqd_pb2.MODEL_STATE_READY]
    if len(ready) == 1:
        return ready[0]
    if not ready:
        raise AwqdError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"no model is READY on awqd at {client.target}; load one with `awqctl load NAME PATH`",
        )
    raise AwqdError(grpc.StatusCode.INVALID_ARGUMENT, f"--model: several models are READY ({', '.join(ready)})")


def main(argv: Sequence[str] | None = None) -> None:
    """The awqctl entry point; exits with the command's status (SystemExit), also when given argv."""
    try:
        app(args=argv, prog_name="awqctl")
    except AwqdError as error:
        print(f"awqctl: error: {error}", file=sys.stderr)
        sys.exit(2 if error.code in _USAGE_CODES else 1)


if __name__ == "__main__":
    main()
