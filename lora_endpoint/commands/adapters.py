"""Put a LoRA adapter live on an endpoint, take one off, or list them - no rebuild, no redeploy.

    lora-endpoint adapters add support out/support --local http://127.0.0.1:8080
    lora-endpoint adapters add support out/support --endpoint-name lora-endpoint --upload s3://my-bucket/adapters
    lora-endpoint adapters add support s3://my-bucket/adapters/3f2a9c1d/adapter.tar.gz --endpoint-name lora-endpoint
    lora-endpoint adapters remove support --endpoint-name lora-endpoint --region eu-west-1
    lora-endpoint adapters list --endpoint-name lora-endpoint        # or: --local http://127.0.0.1:8080

Deployed (--endpoint-name, an endpoint in inference-component mode): an adapter is an adapter inference
component named NAME on the endpoint's base component (found by itself when there is exactly one, else
--base-component). `add` checks a local adapter folder with the handler's own checks, packs it into a
.tar.gz, uploads it under its content hash below --upload, creates the component and waits until it is
InService; `remove` deletes it and waits until it is gone; `list` shows every component of the endpoint.
Requests then name the adapter with InferenceComponentName=NAME.

Local (--local URL): the local endpoint's routes - POST /adapters, DELETE /adapters/NAME, GET /v1/models.

Exit codes:
  0    done
  1    the endpoint or AWS refused or failed it (the handler's error, an inference component that went
       Failed with its FailureReason, an AWS API error, an endpoint that cannot be reached)
  2    bad command line or input, refused before anything changed (a bad name, an adapter folder that
       fails the checks, no or several base components, a name already taken, not an adapter component)
  3    timed out waiting: the change was made and may still complete (see `list`)
  130  interrupted
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_endpoint.local import component_name_problem

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_POLL_S = 15.0


class Refused(Exception):
    """Stop with ``exit_code`` and this message on stderr."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Aws:
    """The boto3 clients a deployed endpoint needs (tests pass stubbed ones)."""

    sagemaker: Any
    s3: Any


# --- command line ----------------------------------------------------------------------------------


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="lora-endpoint adapters", description=doc.split("\n\n")[0],
                                     epilog=doc.split("\n\n", 1)[1], formatter_class=raw)
    target = argparse.ArgumentParser(add_help=False)
    door = target.add_mutually_exclusive_group(required=True)
    door.add_argument("--endpoint-name", metavar="NAME", help="a deployed endpoint in inference-component mode")
    door.add_argument("--local", metavar="URL", help="the local endpoint, e.g. http://127.0.0.1:8080")
    aws = target.add_argument_group("AWS (with --endpoint-name)")
    aws.add_argument("--region", help="AWS region (default: the profile's or AWS_REGION)")
    aws.add_argument("--profile", help="AWS profile (default: the environment's credentials)")
    aws.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress lines while uploading or waiting")
    waiting = argparse.ArgumentParser(add_help=False)
    wait = waiting.add_argument_group("waiting (with --endpoint-name)")
    wait.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT_S, metavar="S",
                      help=f"give up waiting after S seconds, exit 3 (default: {DEFAULT_TIMEOUT_S:g})")
    wait.add_argument("--poll", type=_positive, default=DEFAULT_POLL_S, metavar="S",
                      help=f"seconds between status checks (default: {DEFAULT_POLL_S:g})")
    wait.add_argument("--no-wait", dest="wait", action="store_false",
                      help="return once SageMaker has taken the request, without waiting")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{add,remove,list}")

    add = commands.add_parser(
        "add", parents=[target, waiting], formatter_class=raw,
        help="put an adapter live", description="Put the adapter at SRC live as NAME.", epilog=doc.split("\n\n", 1)[1])
    add.add_argument("name", help="the adapter's name: what requests name (InferenceComponentName on AWS, so letters, "
                                  "digits and '-' only there)")
    add.add_argument("src", help="the adapter folder (peft's save_pretrained); with --endpoint-name also an s3:// URL "
                                 "of an adapter .tar.gz already uploaded; with --local also an s3:// prefix the "
                                 "server reads")
    deployed = add.add_argument_group("add, deployed")
    deployed.add_argument("--upload", metavar="s3://BUCKET/PREFIX",
                          help="where a local folder's archive goes: s3://BUCKET/PREFIX/<sha256[:16]>/adapter.tar.gz "
                               "(skipped when that object is there already); required for a local SRC")
    deployed.add_argument("--kms-key-id", metavar="KEY", help="encrypt the upload with this KMS key (SSE-KMS)")
    deployed.add_argument("--base-component", metavar="NAME",
                          help="the base inference component to attach to (default: the endpoint's only one)")
    deployed.add_argument("--base-model", type=Path, metavar="DIR",
                          help="a local copy of the base model: also check the adapter's target modules and shapes "
                               "against it")
    deployed.add_argument("--max-lora-rank", type=int, metavar="N",
                          help="refuse an adapter of a higher rank (the package's max_lora_rank)")
    local = add.add_argument_group("add, local")
    local.add_argument("--alias", help="alias sent as X-Amzn-SageMaker-Adapter-Alias")
    local.add_argument("--no-preload", dest="preload", action="store_false",
                       help="register without loading it now (preload=false)")
    local.add_argument("--pin", action="store_true", help="keep it resident, never evicted (pin=true)")

    remove = commands.add_parser(
        "remove", parents=[target, waiting], formatter_class=raw,
        help="take an adapter off", description="Take the adapter NAME off the endpoint.",
        epilog=doc.split("\n\n", 1)[1])
    remove.add_argument("name", help="the adapter's name (its inference component's, on AWS)")
    remove.add_argument("--alias", help="with --local: alias sent as X-Amzn-SageMaker-Adapter-Alias")

    listing = commands.add_parser(
        "list", parents=[target], formatter_class=raw,
        help="list the base model and its adapters", description="List the base model and its adapters.",
        epilog=doc.split("\n\n", 1)[1])
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _check_combination(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options that belong to the other kind of endpoint are an error, not silently ignored."""
    if args.local is not None:
        wrong = [flag for flag, value in (("--region", args.region), ("--profile", args.profile),
                                          ("--upload", getattr(args, "upload", None)),
                                          ("--kms-key-id", getattr(args, "kms_key_id", None)),
                                          ("--base-component", getattr(args, "base_component", None)))
                 if value is not None]
    else:
        wrong = [flag for flag, value in (("--alias", getattr(args, "alias", None)),
                                          ("--pin", getattr(args, "pin", False) or None),
                                          ("--no-preload", None if getattr(args, "preload", True) else True))
                 if value is not None]
    if wrong:
        kind = "a deployed endpoint (--endpoint-name)" if args.local is not None else "the local endpoint (--local)"
        parser.error(f"{', '.join(wrong)} only apply to {kind}")


# --- names ---------------------------------------------------------------------------------------


def check_name(name: str, *, deployed: bool) -> None:
    """The handler's rule for adapter names, and on AWS also the inference component name pattern."""
    from lora_endpoint.handler.adapters import AdapterError, validate_adapter_name

    try:
        validate_adapter_name(name)
    except AdapterError as err:
        raise Refused(str(err)) from None
    problem = component_name_problem(name)
    if problem and deployed:
        raise Refused(f"{problem}: an adapter on a deployed endpoint is an inference component of that name")
    if problem:
        print(f"note: {name!r} cannot be named as an inference component (InferenceComponentName); requests name it "
              "with the X-Amzn-SageMaker-Adapter-Identifier header or the body", file=sys.stderr)


# --- deployed --------------------------------------------------------------------------------------


def aws_add(args: argparse.Namespace, aws: Aws, sleep: Callable[[float], None], clock: Callable[[], float]) -> int:
    from lora_endpoint.clients import adapter_artifact as artifact
    from lora_endpoint.clients import components as ic

    check_name(args.name, deployed=True)
    info = None
    if args.src.startswith("s3://"):
        if not args.src.endswith(".tar.gz"):
            raise Refused(f"{args.src} is not a .tar.gz: an adapter inference component's ArtifactUrl is the adapter "
                          "packed as a .tar.gz; give the local folder and --upload, and this script packs it")
        artifact_url = args.src
    else:
        if args.upload is None:
            raise Refused("a local adapter folder needs --upload s3://BUCKET/PREFIX for its archive")
        try:
            info = artifact.check_adapter(args.name, Path(args.src).expanduser(), base_model=args.base_model,
                                          max_lora_rank=args.max_lora_rank)
        except artifact.ArtifactError as err:
            raise Refused(str(err)) from None
        artifact_url = ""
    existing = ic.describe(aws.sagemaker, args.name)
    if existing is not None:
        raise Refused(f"inference component {args.name} exists already ({existing.status}, on endpoint "
                      f"{existing.endpoint}): remove it first or choose another name")
    base = ic.pick_base(ic.endpoint_components(aws.sagemaker, args.endpoint_name), args.endpoint_name,
                        args.base_component)
    if info is not None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="lora-adapter-") as work:
            packed = artifact.pack_adapter(info, Path(work))
            try:
                artifact_url = artifact.upload_adapter(packed, args.upload, aws.s3, kms_key_id=args.kms_key_id,
                                                       progress=args.progress)
            except artifact.ArtifactError as err:
                raise Refused(str(err)) from None
        print(f"adapter {args.name}: rank {info.max_rank}, {len(info.target_modules)} target modules; "
              f"archive at {artifact_url}", file=sys.stderr)
    ic.create_adapter(aws.sagemaker, args.name, args.endpoint_name, base.name, artifact_url)
    print(f"creating inference component {args.name} on endpoint {args.endpoint_name} (base {base.name})",
          file=sys.stderr)
    if args.wait:
        ic.wait(aws.sagemaker, args.name, gone=False, timeout_s=args.timeout, poll_s=args.poll,
                progress=ic.Progress(args.progress), sleep=sleep, clock=clock)
        print(f"{args.name} is InService: invoke with InferenceComponentName={args.name!r}", file=sys.stderr)
    print(args.name)
    return EXIT_OK


def aws_remove(args: argparse.Namespace, aws: Aws, sleep: Callable[[float], None], clock: Callable[[], float]) -> int:
    from lora_endpoint.clients import components as ic

    component = ic.describe(aws.sagemaker, args.name)
    if component is None:
        raise Refused(f"there is no inference component {args.name}")
    if component.endpoint != args.endpoint_name:
        raise Refused(f"inference component {args.name} is on endpoint {component.endpoint}, not {args.endpoint_name}")
    if not component.is_adapter:
        raise Refused(f"{args.name} is a base inference component (it runs the model); this script removes adapter "
                      "components only")
    if component.status != "Deleting":
        ic.delete(aws.sagemaker, args.name)
    print(f"deleting inference component {args.name}", file=sys.stderr)
    if args.wait:
        ic.wait(aws.sagemaker, args.name, gone=True, timeout_s=args.timeout, poll_s=args.poll,
                progress=ic.Progress(args.progress), sleep=sleep, clock=clock)
        print(f"{args.name} is gone", file=sys.stderr)
    return EXIT_OK


def aws_list(args: argparse.Namespace, aws: Aws) -> int:
    from dataclasses import asdict

    from lora_endpoint.clients import components as ic

    found = ic.endpoint_components(aws.sagemaker, args.endpoint_name)
    if args.json:
        print(json.dumps([{**asdict(c), "kind": "adapter" if c.is_adapter else "base"} for c in found], indent=2))
        return EXIT_OK
    rows = [(c.name, f"adapter of {c.base}" if c.is_adapter else f"base ({c.model or 'model'})", c.status,
             c.copies, c.artifact or "") for c in found]
    _table(("NAME", "KIND", "STATUS", "COPIES", "ARTIFACT"), rows)
    if not found:
        print(f"endpoint {args.endpoint_name} has no inference components", file=sys.stderr)
    return EXIT_OK


def aws_clients(args: argparse.Namespace) -> Aws:
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        session = boto3.Session(profile_name=args.profile, region_name=args.region)
        return Aws(session.client("sagemaker"), session.client("s3"))
    except BotoCoreError as err:  # an unknown profile, no region
        raise Refused(f"{err} (see --profile, --region)") from None


# --- local -----------------------------------------------------------------------------------------


def local_run(args: argparse.Namespace) -> int:
    from lora_endpoint.clients.local_adapters import LocalAdapters

    try:
        client = LocalAdapters(args.local)
    except ValueError as err:
        raise Refused(str(err)) from None
    if args.command == "list":
        models = client.models()
        if args.json:
            print(json.dumps(models, indent=2))
        else:
            _table(("ID", "KIND", "PARENT"), [(str(m.get("id")), "adapter" if m.get("parent") else "base",
                                               str(m.get("parent") or "")) for m in models])
        return EXIT_OK
    check_name(args.name, deployed=False)
    if args.command == "add":
        reply = client.add(args.name, args.src, preload=args.preload, pin=args.pin, alias=args.alias)
    else:
        reply = client.remove(args.name, alias=args.alias)
    if not reply.ok:
        raise Refused(f"{args.local} answered {reply.status}: {reply.message}", EXIT_FAILED)
    print(reply.message)
    return EXIT_OK


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def main(argv: Sequence[str] | None = None, *, aws: Aws | None = None, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_combination(parser, args)
    from botocore.exceptions import BotoCoreError, ClientError

    from lora_endpoint.clients.components import ComponentError
    from lora_endpoint.clients.local_adapters import LocalError

    try:
        if args.local is not None:
            return local_run(args)
        clients = aws or aws_clients(args)
        if args.command == "add":
            return aws_add(args, clients, sleep, clock)
        if args.command == "remove":
            return aws_remove(args, clients, sleep, clock)
        return aws_list(args, clients)
    except Refused as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except ComponentError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except LocalError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except ClientError as err:  # SageMaker or S3 refused the call: its code and message say why
        error = err.response.get("Error", {})
        print(f"error: AWS refused {err.operation_name}: {error.get('Code')}: {error.get('Message')}", file=sys.stderr)
        return EXIT_FAILED
    except BotoCoreError as err:  # no credentials, no connection
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted: a change SageMaker has taken goes on without us; check with `list`", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
