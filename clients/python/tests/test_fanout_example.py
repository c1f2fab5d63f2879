"""`examples/fanout.py` runs against the real server and says what the original script said."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from servers import Permitd

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fanout.py"


def test_fanout_example(server: Permitd) -> None:
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), "--url", server.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    # Per limit: five "Handled" lines (in whichever order the calls finish),
    # then the headline.
    assert len(lines) == 12, run.stdout
    took = {}
    for run_lines in (lines[:6], lines[6:]):
        assert sorted(run_lines[:5]) == [
            f"Handled api request №{i} with status code 200" for i in (1, 2, 3, 4, 5)
        ]
        match = re.fullmatch(
            r"takes ~(\d+\.\d{4}) seconds to handle 5 with (\d+) bounded limit", run_lines[5]
        )
        assert match, run_lines[5]
        took[int(match[2])] = float(match[1])
    assert set(took) == {1, 5}
    # Five 100 ms calls one at a time take at least 0.5 s; all at once, about 0.1 s.
    assert took[1] >= 0.5
    assert took[5] < 0.4
