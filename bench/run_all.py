"""Run every benchmark script in bench/ and print each one's closing JSON line.

Usage: ``make bench`` (or ``.venv/bin/python bench/run_all.py [NAME ...]``).
Each script measures a ratio against a baseline it runs side by side, and ends
by printing one JSON line; this runner collects those lines into one summary.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    """Run the selected (default: all) benchmarks and print a JSON summary."""
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != "run_all.py" and not p.name.startswith("_"))
    if argv:
        scripts = [p for p in scripts if p.stem in argv]
    summary: dict[str, object] = {}
    failed = False
    for script in scripts:
        print(f"== {script.name}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr[-4000:])
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            failed = True
            summary[script.stem] = {"error": f"exit {proc.returncode}"}
            continue
        summary[script.stem] = json.loads(lines[-1])
    print(json.dumps(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
