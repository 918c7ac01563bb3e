"""The ``ddpm-course`` command: ``train``, ``sample``, ``grade``, ``assign``, ``bench`` and ``ablate``.

Each subcommand lives beside the module that does the work (``add_arguments`` + ``run`` in
``ddpm_course/commands/``); this file only wires them together, and imports each lazily so that
``ddpm-course --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module in ddpm_course.commands, one-line help)
COMMANDS = {
    "train": ("train", "train a U-Net from a preset (CPU or GPU; DDP under torchrun)"),
    "sample": ("sample", "draw samples from a checkpoint and save a grid"),
    "grade": ("grade", "grade a folder of submitted exercise notebooks into a CSV"),
    "assign": ("assign", "write student exercise notebooks from solution notebooks"),
    "bench": (
        "bench",
        "benchmark training throughput and sampling speed against peers",
    ),
    "nfe-sweep": (
        "nfe",
        "FD and wall time against the number of network evaluations per sampler",
    ),
    "ablate": (
        "ablate",
        "schedules, objectives and min-SNR weighting at an equal step budget (digits)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-course", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(f"ddpm_course.commands.{module_name}")
        except ModuleNotFoundError as error:
            if error.name != f"ddpm_course.commands.{module_name}":
                raise
            sub_parser.set_defaults(_missing=True)
            continue
        module.add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_missing", False):
        parser.error(
            f"'{args.command}' is not available in this version of ddpm-course"
        )
    module = importlib.import_module(f"ddpm_course.commands.{args._module}")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
