"""``lora-endpoint package`` (also ``lora-package``, ``python -m lora_endpoint.packaging``): build (and upload)
the model artifact.

Exit codes: 0 success, 2 bad input (one line on stderr, nothing written at the output path),
1 anything else that went wrong (I/O, S3). The artifact path, or with ``--upload`` the ``s3://`` URI
to use as model data, is the last line on stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lora_endpoint.contract.settings import DTYPES, ENGINES, SettingsError
from lora_endpoint.handler.adapters import AdapterError
from lora_endpoint.packaging.config import ARCHIVE_NAME, DJL_MODES, BuildOptions, PackageError, parse_s3_uri
from lora_endpoint.packaging.extract import safe_extract
from lora_endpoint.packaging.limits import MAX_BYTES_HELP, MAX_MEMBERS_HELP, Limits, count_arg, size_arg

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

DESCRIPTION = """\
Build a validated, reproducible model artifact for the LMI (DJL Serving) container and the SageMaker
inference toolkit: the handler, your LoRA adapters and (optionally) the base model, with a manifest
of every file's sha256. Rebuilding from the same inputs gives byte-identical output.
"""

EPILOG = """\
examples:
  lora-endpoint package build --base-model ./llama-3-8b --adapter support=./out/support --adapter sql=./out/sql
  lora-endpoint package build --base-model meta-llama/Llama-3.1-8B --adapter support=./out/support \\
      --upload s3://my-bucket/models/support --kms-key-id alias/models
  lora-endpoint package build --base-model ./llama-3-8b --adapter support=./out/support --merge --format dir \\
      --output build/merged --upload s3://my-bucket/models/merged
  lora-endpoint package extract model.tar.gz ./model   # safe extraction + manifest check

exit codes: 0 built (and uploaded), 2 bad input (nothing written), 1 other failure (I/O, S3).
"""

EXTRACT_DESCRIPTION = """\
Extract a model.tar.gz into a new (or empty) folder, refusing links, absolute paths, '..', devices,
duplicates and archives that expand past the caps, and check every file against manifest.json (size,
sha256, nothing missing or extra) while it streams. On any refusal, or Ctrl-C, nothing is left behind.

exit codes: 0 extracted and verified (DEST is printed), 2 refused (one line on stderr), 1 other failure
(e.g. the disk is full).
"""


def _adapter_arg(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep:  # a bare folder: named after it
        return Path(value).name, Path(value)
    if not name or not path:
        raise argparse.ArgumentTypeError(f"--adapter must be NAME=PATH, got {value!r}")
    return name, Path(path)


def _s3_arg(value: str) -> str:
    try:
        parse_s3_uri(value)
    except PackageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` documents every option)."""
    root = argparse.ArgumentParser(prog="lora-endpoint package", description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser("build", help="validate inputs and build model.tar.gz or a tree (see build --help)",
                                description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    inputs = build.add_argument_group("inputs")
    inputs.add_argument("--adapter", dest="adapters", action="append", type=_adapter_arg, default=[],
                        metavar="NAME=PATH",
                        help="a LoRA adapter folder (peft save_pretrained output) served as NAME; repeat for "
                             "more. A bare PATH is named after its folder. Names: 1-64 of [A-Za-z0-9._-]")
    inputs.add_argument("--base-model", required=True, metavar="REF",
                        help="a local folder (bundled under base/ and checked against the adapters), an "
                             "s3://bucket/prefix (downloaded by the endpoint at start) or a hub id such as "
                             "org/name (fetched by the endpoint)")
    inputs.add_argument("--merge", action="store_true",
                        help="bake the single --adapter into the local base (peft merge_and_unload): one "
                             "full model under base/, no adapters/, no LoRA overhead per request")
    inputs.add_argument("--convert-pickle", action="store_true",
                        help="convert pickle adapter weights (adapter_model.bin) to safetensors with "
                             "torch.load(weights_only=True); without it they are refused")
    inputs.add_argument("--allow-modules-to-save", action="store_true",
                        help="accept adapters with modules_to_save (full module copies, e.g. lm_head); the "
                             "bundled handler serves them, LMI's own LoRA backends do not")
    inputs.add_argument("--allow-base-mismatch", action="store_true",
                        help="accept adapters whose base_model_name_or_path names another model than "
                             "--base-model (e.g. a renamed local copy)")

    out = build.add_argument_group("output")
    out.add_argument("--output", type=Path, default=None, metavar="PATH",
                     help=f"where to write the artifact (default: {ARCHIVE_NAME}, or model/ with --format dir); "
                          "built next to it and renamed into place only when complete")
    out.add_argument("--format", choices=("tar", "dir"), default="tar",
                     help="tar: one deterministic model.tar.gz (ModelDataUrl); dir: an uncompressed tree for "
                          "an S3 prefix (ModelDataSource S3Prefix, what LMI recommends for large models). "
                          "Default: tar")
    out.add_argument("--compress-level", type=int, default=1, metavar="0-9",
                     help="gzip level for --format tar (default 1: on model weights about 1%% larger than "
                          "level 6, the level of tar -czf, and several times faster; see docs/benchmarks.md)")
    out.add_argument("--workers", type=int, default=0, metavar="N",
                     help="threads for hashing and compression (default: one per CPU)")
    out.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bars on stderr")

    serving = build.add_argument_group("serving options (written to serving.properties)")
    serving.add_argument("--dtype", choices=DTYPES, default="auto",
                         help="weights dtype on the endpoint (option.dtype; default auto: the base's own)")
    serving.add_argument("--djl-mode", choices=DJL_MODES, default="async",
                         help="DJL Serving's Python engine mode. async (default; option.async_mode=true): every "
                              "request is its own call of the async handle and the handler's engine batches them "
                              "continuously - use it with LMI images >= 0.33. sync (option.async_mode=false, "
                              "option.handler=handle_sync): one call per DJL batch (--batch-size, --max-batch-delay) "
                              "- for LMI setups without async mode, or that need DJL's own batching")
    serving.add_argument("--batch-size", type=int, default=None, metavar="N",
                         help="--djl-mode sync only: requests DJL gathers into one handler call (batch_size; "
                              "default 1)")
    serving.add_argument("--max-batch-delay", type=int, default=None, metavar="MS",
                         help="--djl-mode sync only: milliseconds DJL waits to fill a batch (max_batch_delay; "
                              "default 100)")
    serving.add_argument("--max-new-tokens", type=int, default=1024, metavar="N",
                         help="server-side cap on generated tokens per request (option.max_new_tokens; "
                              "default 1024)")
    serving.add_argument("--tensor-parallel-degree", type=int, default=1, metavar="N",
                         help="GPUs the model is spread over (option.tensor_parallel_degree; default 1): vLLM's "
                              "tensor parallelism; the transformers engine spreads layers instead")
    serving.add_argument("--engine", choices=ENGINES, default="auto",
                         help="what generates in the container (option.engine): vllm (vLLM, in the GPU LMI "
                              "image), transformers (the handler's own engine) or auto (default: vLLM when it is "
                              "installed and a GPU is present)")
    serving.add_argument("--max-lora-rank", type=int, default=64, metavar="N",
                         help="largest adapter rank accepted (option.max_lora_rank; default 64); adapters "
                              "above it are refused")

    upload = build.add_argument_group("upload")
    upload.add_argument("--upload", type=_s3_arg, default=None, metavar="s3://BUCKET/PREFIX",
                        help="upload to s3://BUCKET/PREFIX/<content hash>/ (model.tar.gz, or the tree) and "
                             "print that URI last on stdout; skipped when the same hash is already there")
    upload.add_argument("--kms-key-id", default=None, metavar="KEY",
                        help="encrypt uploads with this KMS key (SSE-KMS: key id, ARN or alias)")
    upload.add_argument("--multipart-chunk-mb", type=int, default=64, metavar="MB",
                        help="multipart part size and threshold in MiB (default 64)")
    upload.add_argument("--upload-concurrency", type=int, default=10, metavar="N",
                        help="parallel part uploads per file (default 10)")

    extract = commands.add_parser("extract", help="safely extract a model.tar.gz and check it against its manifest",
                                  description=EXTRACT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    extract.add_argument("archive", type=Path, help="the model.tar.gz")
    extract.add_argument("dest", type=Path, help="a new (or empty) folder")
    extract.add_argument("--max-bytes", type=size_arg, default=None, metavar="SIZE", help=MAX_BYTES_HELP)
    extract.add_argument("--max-members", type=count_arg, default=None, metavar="N", help=MAX_MEMBERS_HELP)
    return root


def _build(args: argparse.Namespace) -> int:
    print(build_and_upload(args))
    return EXIT_OK


def build_and_upload(args: argparse.Namespace) -> str:
    """``build`` with parsed flags (``parser().parse_args(["build", ...])``): the artifact's path, or with
    ``--upload`` its ``s3://`` URI. Progress goes to stderr; errors raise (``main`` turns them into exit codes)."""
    from lora_endpoint.packaging.build import build
    from lora_endpoint.packaging.upload import transfer_config, upload_artifact

    default_output = Path(ARCHIVE_NAME if args.format == "tar" else "model")
    options = BuildOptions(
        base_model=args.base_model,
        output=args.output or default_output,
        adapters=tuple(args.adapters),
        format=args.format,
        merge=args.merge,
        dtype=args.dtype,
        djl_mode=args.djl_mode,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay,
        max_new_tokens=args.max_new_tokens,
        tensor_parallel_degree=args.tensor_parallel_degree,
        engine=args.engine,
        max_lora_rank=args.max_lora_rank,
        allow_modules_to_save=args.allow_modules_to_save,
        allow_base_mismatch=args.allow_base_mismatch,
        convert_pickle=args.convert_pickle,
        compress_level=args.compress_level,
        workers=args.workers,
        progress=args.progress,
    )
    if not 5 <= args.multipart_chunk_mb <= 5120 or not 1 <= args.upload_concurrency <= 64:
        raise PackageError("--multipart-chunk-mb must be 5..5120 and --upload-concurrency 1..64")
    result = build(options)
    print(f"built {result.path} ({result.format}, content hash {result.content_hash})", file=sys.stderr)
    if not args.upload:
        return str(result.path)
    chunk = args.multipart_chunk_mb << 20
    config = transfer_config(threshold=chunk, chunk_size=chunk, concurrency=args.upload_concurrency)
    return upload_artifact(result.path, result.content_hash, args.upload, manifest=result.manifest,
                           kms_key_id=args.kms_key_id, progress=args.progress, config=config)


def _extract(args: argparse.Namespace) -> int:
    """safe_extract checks the manifest as the archive streams: what lands at dest is verified."""
    limits = Limits(max_bytes=args.max_bytes, max_members=args.max_members)
    print(safe_extract(args.archive, args.dest, limits=limits, require_manifest=True))
    return EXIT_OK


# What exits 2: the inputs are wrong (one line, nothing written).
INPUT_ERRORS = (PackageError, AdapterError, SettingsError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = parser().parse_args(None if argv is None else list(argv))
    try:
        return _build(args) if args.command == "build" else _extract(args)
    except INPUT_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: nothing was written at the output path", file=sys.stderr)
        return 130
    except Exception as err:  # I/O, S3: one line, not a traceback (set PYTHONDEVMODE for one)
        print(f"failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
