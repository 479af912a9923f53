"""awqctl: inspect and drive one awqd daemon from the shell.

Failures print one line, `awqctl: error: CODE: message`, on stderr and exit 2 for a bad request, 1 otherwise;
Ctrl-C exits 130. With --json, stdout carries only JSON (snake_case field names), so scripts can parse it.
"""

import sys
from collections.abc import Sequence
from contextlib import closing
from typing import Annotated

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.text import Text

from awqd_client import render
from awqd_client.client import AwqdClient
from awqd_client.errors import AwqdError
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
) -> None:
    client = AwqdClient(target, timeout=timeout)  # the channel connects lazily, on the first call
    ctx.call_on_close(client.close)
    ctx.obj = client


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
    device: Annotated[str, typer.Option(help='Torch device, e.g. "cuda:0" or "cpu"; default GPU 0 or the CPU.')] = "",
    kernel: Annotated[str, typer.Option(help='"auto", a family (gemm, gemv, gemv_fast) or a candidate.')] = "auto",
    json_output: JsonFlag = False,
) -> None:
    """Load an AWQ checkpoint; returns once the model is READY."""
    model = _client(ctx).load_model(name, path, device=device, kernel=kernel)
    print(to_json(model) if json_output else render.loaded_line(model))


@app.command()
def unload(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The hosted model's name.")]) -> None:
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
    seed: Annotated[int | None, typer.Option(min=0, help="Sampling seed; the same seed gives the same text.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop at this string (repeatable).")] = None,
    kernel: Annotated[str, typer.Option(help='"auto", gemm, gemv, gemv_fast or a candidate name.')] = "auto",
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
