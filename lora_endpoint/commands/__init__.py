"""The ``lora-endpoint`` subcommands, one module each: flags, progress and exit codes; the work is in the
packages (``packaging``, ``local``, ``clients``, ``training``). ``lora_endpoint.cli`` puts them under one
command; each module also runs on its own (``python -m lora_endpoint.commands.invoke``)."""
