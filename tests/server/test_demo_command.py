"""The README's first command, minus setup (which the test command already ran)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_the_workflow_headlessly_and_writes_images(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_demo.py"), "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    images = [Path(line.split("image: ", 1)[1]) for line in result.stdout.splitlines() if line.startswith("image: ")]
    assert images, result.stdout
    for image in images:
        assert image.exists() and image.stat().st_size > 0
        assert image.is_relative_to(tmp_path)
