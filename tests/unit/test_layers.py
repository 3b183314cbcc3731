"""The package's layers, as import-linter contracts (`.importlinter` at the top of the repository), and its files'
size: core <- engine <- runners and modes <- cli, deploy and tools; adapters never climb back up; no import circle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 600
"""Lines per file under scoring/; a reason written at the top of the module (a line starting ``# longer than 600
lines:``) allows up to :data:`HARD_LIMIT`."""
HARD_LIMIT = 700


def test_the_import_contracts_hold():
    """Every import, module-level or inside a function, counts: a lazy import that climbs a layer is still a
    dependency of the layer below on the one above."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "broken" not in result.stdout.split("Contracts:")[-1].split("\n")[0].replace("0 broken", "")


def test_no_file_in_the_package_is_longer_than_600_lines_without_a_reason():
    too_long = {}
    for path in sorted((ROOT / "scoring").rglob("*.py")):
        lines = path.read_text().splitlines()
        reason = any(line.startswith("# longer than 600 lines:") for line in lines[:15])
        if len(lines) > (HARD_LIMIT if reason else LIMIT):
            too_long[path.relative_to(ROOT).as_posix()] = len(lines)
    assert not too_long, (
        f"files over {LIMIT} lines: {too_long} (split them along a seam; a '# longer than 600 lines: <reason>' line "
        f"at the top allows up to {HARD_LIMIT})"
    )
