"""The `rumor` command line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

Command = Callable[[argparse.Namespace], int]


def _cmd_demo(args: argparse.Namespace) -> int:
    from node.demo import run_demo

    return run_demo(args)


def _cmd_export_models(args: argparse.Namespace) -> int:
    from pathlib import Path

    from inference.models import export_builtins

    for path in export_builtins(Path(args.out)):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rumor",
        description="Decentralized state layer for fleets of GPU inference nodes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser("demo", help="run the showcase (the main job behind `make demo`)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--nodes", type=int, default=3, help="daemons to start (default 3)")
    demo.add_argument("--requests", type=int, default=300, help="requests to send (default 300)")
    demo.set_defaults(func=_cmd_demo)

    export = sub.add_parser(
        "export-models",
        help="write the built-in models as TorchScript (.pt), torch.export (.pt2) and "
        "state_dict files, each with an I/O-spec sidecar",
    )
    export.add_argument("--out", default="models", help="output directory (default ./models)")
    export.set_defaults(func=_cmd_export_models)

    # The simulator is a package above node (it runs node's cluster layer), so
    # its command is found by name rather than imported: node never imports sim.
    sim_cli = importlib.import_module("sim.cli")
    sim_cli.add_sim_parser(sub)

    from .chat import add_chat_parser
    from .commands import add_node_parsers

    add_node_parsers(sub)
    add_chat_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
