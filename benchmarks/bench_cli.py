"""How fast the CLI answers `--help`: `spiketide --help` and `spiketide CMD --help` for every command.

Each is a fresh `python -m spiketide.cli ... --help` process (the console script does the same), timed wall-clock;
the median of `--repeats` runs (default 7) is reported, with the interpreter's own start-up (`python -c pass`)
beside it. `--src DIR ...` times other source trees (e.g. a checkout of an older commit's `src/`) in the same
interleaved loop, so a busy machine slows them alike. Target (issue 15): under 0.5 s each on a 2-core machine.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ["", "train", "demo", "plot", "fisher", "deficits", "robustness", "early-exit", "stats", "prune",
            "export-nir", "reproduce", "report"]
HERE = Path(__file__).resolve().parents[1] / "src"


def run_once(src: Path, argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--src", nargs="*", default=[str(HERE)], help="source trees to time (default: this checkout's)")
    args = p.parse_args(argv)
    srcs = [Path(s).resolve() for s in args.src]
    cases = {"python -c pass": ["-c", "pass"]}
    cases.update({f"spiketide {c} --help".replace("  ", " "): ["-m", "spiketide.cli", *([c] if c else []), "--help"]
                  for c in COMMANDS})
    times = {(str(s), name): [] for s in srcs for name in cases}
    for r in range(args.repeats):
        for name, case in cases.items():
            for s in (srcs if r % 2 == 0 else srcs[::-1]):
                times[(str(s), name)].append(run_once(s, case))
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version(), "load_end": os.getloadavg()},
              "repeats": args.repeats,
              "median_s": {s: {name: statistics.median(times[(str(s), name)]) for name in cases} for s in map(str, srcs)},
              "samples_s": {f"{s} | {name}": v for (s, name), v in times.items()}}
    print("median wall time (s) of each command, fresh process")
    print(f"{'command':32}" + "".join(f"{Path(s).parent.name + '/' + Path(s).name:>24}" for s in srcs))
    for name in cases:
        print(f"{name:32}" + "".join(f"{result['median_s'][str(s)][name]:>24.3f}" for s in srcs))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
