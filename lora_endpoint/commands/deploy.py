"""From adapter folders to an endpoint in one command: build the package, upload it, ``cdk deploy``.

    lora-endpoint deploy --base-model meta-llama/Llama-3.1-8B --adapter support=out/support \\
        -c account=123456789012 -c region=us-east-1 -c alarm_email=oncall@example.com
    lora-endpoint deploy --base-model ./llama-3-8b --adapter support=out/support \\
        --upload s3://my-models/llama-lora -c region=us-east-1
    lora-endpoint deploy --package dist/model.tar.gz -c region=us-east-1     # an existing package
    lora-endpoint deploy ... --synth        # build + synthesize (cdk.out/, cdk-nag checked), offline
    lora-endpoint deploy ... --dry-run      # print the steps, run nothing

Every flag of ``lora-endpoint package build`` is accepted and passed on (``--merge``, ``--dtype``,
``--format dir`` ...). Without ``--upload`` the CDK uploads the package as an asset to its bootstrap bucket;
with it the package goes to that S3 prefix under its content hash (resumable, verified) and the stack reads
it there. ``-c KEY=VALUE`` are the CDK app's context keys (docs/deploy.md, "Context keys"); ``model_data`` is set from
the package. Needs a source checkout (the CDK app is not installed), Node.js with ``npm ci`` run there, and
AWS credentials (``--profile``, or the usual environment). ``--synth`` needs neither the CDK CLI nor credentials:
it runs the app itself (as ``make synth`` does) and writes the template to ``cdk.out/`` in the checkout.

Exit codes: 0 deployed (or synthesized), 2 bad input (flags, adapters, context, no checkout or CDK CLI;
nothing deployed), 1 the build, upload or ``cdk`` failed (its output is above), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lora_endpoint.commands.checkout import NoCheckout, source_checkout

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]


def parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="lora-endpoint deploy", description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        usage="lora-endpoint deploy [PACKAGE BUILD FLAGS | --package PATH] [-c KEY=VALUE ...] [options]")
    p.add_argument("--package", type=Path, metavar="PATH",
                   help="deploy this package (model.tar.gz or package dir) instead of building one")
    p.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE",
                   help="a CDK context key for the stack (repeat); model_data comes from the package")
    p.add_argument("--profile", help="the AWS profile for the upload and cdk (default: the environment's)")
    p.add_argument("--require-approval", choices=("never", "any-change", "broadening"), default="broadening",
                   help="cdk's approval prompt for security changes (default: broadening, cdk's own default)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--synth", action="store_true",
                      help="build and synthesize only (offline, cdk-nag checked, no CDK CLI needed): the "
                           "template goes to cdk.out/; nothing uploaded or deployed")
    mode.add_argument("--dry-run", action="store_true", help="print the steps and commands; run nothing")
    return p


def _context(pairs: Sequence[str]) -> dict[str, str]:
    context: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"-c {pair[:100]!r}: expected KEY=VALUE")
        if key == "model_data":
            raise ValueError("-c model_data: deploy sets it from the package it builds (use --package PATH to "
                             "deploy an existing one)")
        context[key] = value
    return context


def _cdk_executable(root: Path) -> Path:
    cdk = root / "node_modules" / ".bin" / "cdk"
    if not cdk.exists():
        raise NoCheckout(f"the CDK CLI is not installed in {root}: run `npm ci` there (Node.js 22+)")
    return cdk


def _cdk_command(cdk: Path, action: str, context: dict[str, str], args: argparse.Namespace) -> list[str]:
    if action == "synth":  # the app itself, as `make synth`: the CLI would only pass the context on
        return [sys.executable, "-m", "cdk.app"]
    # The app runs with this interpreter (cdk.json names .venv's), so the stack sees the same packages.
    command = [str(cdk), action, "--app", f"{shlex.quote(sys.executable)} -m cdk.app"]
    for key, value in context.items():
        command += ["-c", f"{key}={value}"]
    if args.profile:
        command += ["--profile", args.profile]
    if action == "deploy":
        command += ["--require-approval", args.require_approval]
    return command


def _synth_env(root: Path, context: dict[str, str]) -> dict[str, str]:
    """The environment the CDK CLI gives the app for a synth: cdk.json's context under the command line's, as
    ``CDK_CONTEXT_JSON``, and the output folder (``CDK_OUTDIR``, default ``cdk.out/`` in the checkout)."""
    try:
        saved = json.loads((root / "cdk.json").read_text()).get("context", {})
    except (OSError, ValueError, AttributeError):
        saved = {}  # nothing saved there: the command line's context and the app's defaults
    env = {**os.environ, "CDK_CONTEXT_JSON": json.dumps({**saved, **context})}
    env.setdefault("CDK_OUTDIR", str(root / "cdk.out"))
    return env


def _step(number: int, total: int, text: str) -> None:
    print(f"[{number}/{total}] {text}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None, *, run: Runner = subprocess.run, cdk: Path | None = None) -> int:
    """Run ``lora-endpoint deploy``; ``run`` executes the cdk command and ``cdk`` is the CDK CLI (default: the
    checkout's ``node_modules/.bin/cdk``); tests pass a recorder."""
    from lora_endpoint.packaging import cli as package_cli

    args, build_flags = parser().parse_known_args(list(sys.argv[1:] if argv is None else argv))
    try:
        context = _context(args.context)
        if args.package is not None:
            if build_flags:
                raise ValueError(f"--package deploys an existing package; these build flags would be ignored: "
                                 f"{' '.join(build_flags)[:200]}")
            if not args.package.exists():
                raise ValueError(f"--package {args.package}: no such file or folder")
        elif not any(flag == "--base-model" or flag.startswith("--base-model=") for flag in build_flags):
            raise ValueError("give --base-model (and --adapter NAME=PATH) to build a package, or --package PATH to "
                             "deploy one built before")
        build_args = None if args.package is not None else package_cli.parser().parse_args(["build", *build_flags])
        if build_args is not None and args.synth and build_args.upload:
            raise ValueError("--synth uploads nothing: leave out --upload")
        root = source_checkout("deploy", "cdk.json")
        action = "synth" if args.synth else "deploy"
        if args.dry_run:
            planned = {**context, "model_data": str(args.package or "<the package built>")}
            if build_args is not None:
                print("lora-endpoint package build " + shlex.join(build_flags))
            print(shlex.join(_cdk_command(cdk or Path("npx cdk"), action, planned, args)))
            return EXIT_OK
        if action == "deploy":
            cdk = cdk or _cdk_executable(root)
    except (ValueError, NoCheckout) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    total = 2 if build_args is not None else 1
    if build_args is not None:
        _step(1, total, "building the package" + (f" and uploading it to {build_args.upload}" if build_args.upload
                                                 else ""))
        if args.profile:
            os.environ["AWS_PROFILE"] = args.profile  # the upload's boto3 session, as cdk's --profile
        try:
            location = package_cli.build_and_upload(build_args)
        except KeyboardInterrupt:
            print("interrupted: nothing was deployed", file=sys.stderr)
            return 130
        except Exception as err:  # the packager's own messages: one line, its exit code
            bad_input = isinstance(err, package_cli.INPUT_ERRORS)
            print(f"{'error' if bad_input else 'failed'}: {err}", file=sys.stderr)
            return EXIT_USAGE if bad_input else EXIT_FAILED
    else:
        location = str(args.package)
    model_data = location if location.startswith("s3://") else str(Path(location).resolve())
    context = {**context, "model_data": model_data}
    command = _cdk_command(cdk or Path("cdk"), action, context, args)
    _step(total, total, f"cdk {action} with model_data={model_data}")
    print(shlex.join(command), file=sys.stderr, flush=True)
    env = _synth_env(root, context) if action == "synth" else None
    try:
        finished = run(command, cwd=root, check=False, env=env)
    except KeyboardInterrupt:
        print(f"interrupted: cdk {action} was stopped; `cdk deploy` again resumes (the stack's state is in "
              "CloudFormation)", file=sys.stderr)
        return 130
    if finished.returncode != 0:
        print(f"failed: cdk {action} exited {finished.returncode} (its output is above)", file=sys.stderr)
        return EXIT_FAILED
    print(model_data)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
