"""Screen candidate training recipes for the digits (issue 15): FD after 60 and 120 s of training.

Each candidate is NAME=JSON: training settings that replace the `digits` preset's, with an
optional "model" entry of U-Net arguments that replace the `digits` U-Net's. Every candidate is
trained from scratch by `ddpm_course.experiments.time_to_quality.run_time_to_quality` (the harness of
`ddpm-course bench --time-to-floor`), on 2 torch threads, and the report goes to OUT (JSON).
A screen is one or two seeds, to find candidates; the 3-seed comparison is the bench itself.

    python scripts/recipe_screen.py OUT.json SEEDS NAME=JSON ...
    python scripts/recipe_screen.py screen.json 0 base= fast-lr='{"lr": 2e-3, "warmup_steps": 50}'
"""

from __future__ import annotations

import json
import sys

import torch

from ddpm_course import config, nn
from ddpm_course.experiments.time_to_quality import run_time_to_quality


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    out, seeds, specs = argv[0], [int(s) for s in argv[1].split(",")], argv[2:]
    names = []
    for spec in specs:
        name, _, settings = spec.partition("=")
        overrides = json.loads(settings) if settings else {}
        model = overrides.pop("model", {})
        nn.PRESETS[name] = {**nn.PRESETS["digits"], **model}
        config.TRAIN_PRESETS[name] = {**config.TRAIN_PRESETS["digits"], **overrides}
        names.append(name)
    torch.set_num_threads(2)
    report = run_time_to_quality(names, (60, 120), seeds)
    report["specs"] = specs
    with open(out, "w") as file:
        json.dump(report, file, indent=1)
    for name, result in report["contenders"].items():
        fds = [round(point["median"], 1) for point in result["fd"]]
        print(name, "FD at 60 s, 120 s:", fds)
    print("floor", report["floor"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
