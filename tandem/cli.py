"""The `tandem` command: dispatches to one module per subcommand, imported only when used.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int`; importing lazily
keeps `tandem --help` and light commands free of torch and gRPC start-up cost.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "make-tiny-model": ("tandem.engine.tiny_model", "write a small random-weight model folder"),
    "demo": ("tandem.demo", "run the local demo end to end"),
    "serve": ("tandem.local_cluster", "start a router and workers as local processes"),
    "prefill": ("prefill_worker.main", "run a prefill worker"),
    "decode": ("decode_worker.main", "run a decode worker"),
    "router": ("router.main", "run the router"),
    "generate": ("tandem.client_cli", "send one prompt to a router and stream the answer"),
    "chat": ("tandem.client_cli", "chat with a router interactively"),
    "simulate": ("tandem.sim.cli", "simulate a cluster on a request trace"),
    "difficulty": ("tandem.difficulty.training.cli", "train and evaluate difficulty estimators"),
    "operator": ("tandem_operator.cli", "run the Kubernetes operator"),
}


def _usage() -> str:
    lines = ["usage: tandem <command> [options]", "", "commands:"]
    lines += [f"  {name:<16} {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tandem` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"tandem: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"tandem {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(parser, name) if _takes_name(module) else module.add_arguments(parser)
    args = parser.parse_args(rest)
    args.command = name
    return int(module.run(args) or 0)


def _takes_name(module) -> bool:
    # Modules that serve several commands (generate and chat) receive the command's name.
    return module.add_arguments.__code__.co_argcount == 2


if __name__ == "__main__":
    sys.exit(main())
