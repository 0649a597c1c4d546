"""Fine-tune a LoRA adapter on prompt/response pairs or chat conversations (``--help`` for every option).

Thin command over ``lora_endpoint.training.trainer``. Exit codes: 0 trained, 2 bad input (one line on stderr),
1 anything else.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from lora_endpoint.training.data import PROMPT_FORMATS, DatasetError
from lora_endpoint.training.trainer import TrainConfig, TrainingInputError, train_lora

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULTS = TrainConfig()

DESCRIPTION = """\
Fine-tune a LoRA adapter with transformers + peft and save it with save_pretrained(safe_serialization=True):
adapter_config.json + adapter_model.safetensors, ready for
  lora-endpoint package build --base-model BASE --adapter NAME=OUTPUT

Dataset: a .jsonl file (one record a line) or a .json list of records, each either
  {"prompt": "...", "response": "..."}   prompt followed by response, as the endpoint sees {"inputs": prompt}
  {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
                                         rendered with the base tokenizer's chat template, as the chat route does
Loss is taken on response tokens only (every assistant turn, plus EOS). A seeded share of the records
(--eval-split) is held out and its loss reported before training and after epochs (about ten lines a run).
Uses CUDA when present (bfloat16 base weights where supported), else the CPU.
"""

EPILOG = """\
examples:
  python lora_endpoint/commands/train.py --base-model .demo/base --data scripts/data/qa.jsonl --output .demo/adapters/qa
  python lora_endpoint/commands/train.py --base-model ./llama-3-8b --data support.jsonl --output out/support \\
      --rank 16 --alpha 32 --target-modules q_proj,k_proj,v_proj,o_proj --epochs 2 --prompt-format chat

exit codes: 0 trained, 2 bad input (missing or malformed dataset, bad option, unknown module), 1 other failure.
"""


def _modules(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("--target-modules needs at least one module name")
    return names


def parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` documents every option)."""
    p = argparse.ArgumentParser(prog="lora-endpoint train", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("inputs and output")
    io.add_argument("--base-model", required=True, metavar="PATH",
                    help="the base model: a local transformers folder (config.json, weights, tokenizer) or a hub id")
    io.add_argument("--data", required=True, type=Path, metavar="FILE",
                    help="training records, .jsonl or .json (see above)")
    io.add_argument("--output", required=True, type=Path, metavar="DIR",
                    help="where to write the adapter (created; existing adapter files are overwritten)")
    io.add_argument("--prompt-format", choices=PROMPT_FORMATS, default=DEFAULTS.prompt_format,
                    help="how prompt/response records are rendered: raw (prompt + response, for the generate "
                         "route) or chat (one user and one assistant turn through the chat template, for the "
                         f"chat route). messages records always use the chat template. Default: "
                         f"{DEFAULTS.prompt_format}")
    lora = p.add_argument_group("LoRA")
    lora.add_argument("--rank", type=int, default=DEFAULTS.rank, metavar="R",
                      help=f"rank r of the low-rank update (default {DEFAULTS.rank})")
    lora.add_argument("--alpha", type=int, default=DEFAULTS.alpha, metavar="A",
                      help=f"lora_alpha; the update is scaled by alpha/r (default {DEFAULTS.alpha})")
    lora.add_argument("--dropout", type=float, default=DEFAULTS.dropout, metavar="P",
                      help=f"dropout on the LoRA input, 0 <= P < 1 (default {DEFAULTS.dropout})")
    lora.add_argument("--target-modules", type=_modules, default=DEFAULTS.target_modules, metavar="A,B",
                      help="comma-separated module names to adapt (default "
                           f"{','.join(DEFAULTS.target_modules)})")
    opt = p.add_argument_group("training")
    opt.add_argument("--epochs", type=int, default=DEFAULTS.epochs, metavar="N",
                     help=f"passes over the training records (default {DEFAULTS.epochs})")
    opt.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate, metavar="LR",
                     help=f"peak AdamW learning rate, linear decay after warmup (default {DEFAULTS.learning_rate})")
    opt.add_argument("--warmup-steps", type=int, default=DEFAULTS.warmup_steps, metavar="N",
                     help=f"steps of linear learning-rate warmup (default {DEFAULTS.warmup_steps})")
    opt.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, metavar="N",
                     help=f"records per optimiser step (default {DEFAULTS.batch_size})")
    opt.add_argument("--max-length", type=int, default=DEFAULTS.max_length, metavar="N",
                     help=f"truncate each record to N tokens; records left with no response token are "
                          f"dropped and counted (default {DEFAULTS.max_length})")
    opt.add_argument("--eval-split", type=float, default=DEFAULTS.eval_split, metavar="F",
                     help=f"share of records held out for the eval loss, 0..0.5; 0 trains on all "
                          f"(default {DEFAULTS.eval_split})")
    opt.add_argument("--seed", type=int, default=DEFAULTS.seed, metavar="N",
                     help=f"seed for the split, the shuffling, dropout and the adapter's initial weights "
                          f"(default {DEFAULTS.seed})")
    run = p.add_argument_group("run")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default=DEFAULTS.device,
                     help="where to train: auto picks cuda when a GPU is visible (default auto)")
    run.add_argument("--threads", type=int, default=0, metavar="N",
                     help="CPU threads for torch (default 0: torch's choice; 1 is fastest for tiny models on a busy "
                          "machine)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar; print one line per epoch instead")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")  # peft vs transformers 5
    try:
        config = TrainConfig(rank=args.rank, alpha=args.alpha, dropout=args.dropout,
                             target_modules=tuple(args.target_modules), epochs=args.epochs,
                             learning_rate=args.learning_rate, batch_size=args.batch_size,
                             max_length=args.max_length, eval_split=args.eval_split, seed=args.seed,
                             prompt_format=args.prompt_format, warmup_steps=args.warmup_steps, device=args.device)
    except ValueError as err:
        print(f"lora-endpoint train: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.threads < 0:
        print(f"lora-endpoint train: --threads must be >= 0, got {args.threads}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not args.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars too
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        result = train_lora(args.base_model, args.data, args.output, config, progress=args.progress,
                            log=lambda line: print(line, file=sys.stderr))
    except (DatasetError, TrainingInputError) as err:
        print(f"lora-endpoint train: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("lora-endpoint train: interrupted", file=sys.stderr)
        return EXIT_FAILED
    summary = f"final train loss {result.train_losses[-1]:.4f}"
    if result.eval_losses:
        summary += f", eval loss {result.eval_losses[0]:.4f} -> {result.eval_losses[-1]:.4f}"
    print(f"lora-endpoint train: {len(result.train_losses)} steps, {result.trainable_parameters} trainable parameters, "
          f"{summary}", file=sys.stderr)
    print(args.output)  # the adapter folder, last line on stdout
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
