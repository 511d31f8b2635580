"""Start-up: ``train.py --help`` and ``--print-config`` answer without importing torch or Lightning."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import sys
from transformer.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "lightning", "datasets", "transformers") if m in sys.modules)
print("HEAVY", heavy, file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["--help"], ["--print-config"], ["--config", "configs/lm/gqa.yaml", "--print-config"],
                                  ["--config", "configs/regression/default.yaml", "--print-config"],
                                  ["model.attention.type=flash"]])
def test_help_and_print_config_import_no_torch(argv):
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in done.stderr, done.stderr[-2000:]
    assert done.stdout.strip() or "error:" in done.stderr
