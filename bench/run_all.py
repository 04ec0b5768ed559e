"""`make bench`: run every benchmark script in this folder, one after another."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name not in {
    "run_all.py", "noop_app.py", "bare_web.py",
    "compare_revisions.py"})  # an app, a module and a script that needs a revision to compare with

failed = []
for script in SCRIPTS:
    print(f"\n=== {script.name}", flush=True)
    if subprocess.run([sys.executable, str(script)], cwd=HERE).returncode != 0:
        failed.append(script.name)
sys.exit(f"failed: {', '.join(failed)}" if failed else 0)
