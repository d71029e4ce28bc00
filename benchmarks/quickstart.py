"""The README's run command on a fresh clone, timed: `make run` from nothing to a printed champion.

Clones the repository's committed HEAD into a temporary folder (a fresh clone: no .venv, no runs/)
and times, in that one run on this machine:
  1. `make venv`                 the set-up alone (venv + torch CPU build + the project), the baseline;
  2. `make run`                  the whole chain (synthetic data -> Parquet -> MaskVAE -> DMN -> EBST ->
                                 parser -> evaluate -> register -> gate) on the embedded defaults;
  3. `make run` again            a rerun, which must train and register nothing.
Prints each wall time, the total a new user waits (1 + 2, issue 9's budget: 15 min on 2 cores) and
each as a ratio to the set-up measured here (these machines are shared and noisy). pip's cache is
whatever this machine has; a first install on a new machine downloads more.

  python benchmarks/quickstart.py
  python benchmarks/quickstart.py --keep /tmp/quickstart-clone   # keep the clone to look at runs/

Nothing here asserts a time; a failed command stops the benchmark with its exit status.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 15 * 60


def timed(command: list[str], cwd: Path, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as handle:
        completed = subprocess.run(command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{' '.join(command)} failed with status {completed.returncode}:\n{tail}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    description, _, examples = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(
        description=description, epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", metavar="DIR", help="clone into DIR (must not exist) and keep it")
    args = parser.parse_args(argv)
    if args.keep and os.path.exists(args.keep):
        parser.error(f"--keep {args.keep} already exists; give a new folder")
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="maskgan-quickstart-")) / "clone"
    try:
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(workdir)], check=True)
        env_note = "NVIDIA GPU" if shutil.which("nvidia-smi") else "CPU only"
        print(f"fresh clone of {REPO} at {workdir} ({os.cpu_count()} cores, {env_note})", flush=True)
        setup = timed(["make", "venv"], workdir, workdir.parent / "venv.log")
        print(f"  make venv            {setup:7.1f} s   1.00x (baseline: set-up)", flush=True)
        run = timed(["make", "run"], workdir, workdir.parent / "run.log")
        print(f"  make run             {run:7.1f} s  {run / setup:5.2f}x", flush=True)
        rerun = timed(["make", "run"], workdir, workdir.parent / "rerun.log")
        print(f"  make run (rerun)     {rerun:7.1f} s  {rerun / setup:5.2f}x", flush=True)
        total = setup + run
        verdict = "within" if total <= BUDGET_S else "OVER"
        print(f"  fresh machine total  {total:7.1f} s  {total / setup:5.2f}x   ({verdict} the 15 min budget)")
        lines = (workdir.parent / "run.log").read_text().splitlines()
        champion = [line for line in lines if "champion" in line]
        print("  " + (champion[-1].strip() if champion else "no champion line in make run's output"))
    finally:
        if not args.keep:
            shutil.rmtree(workdir.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
