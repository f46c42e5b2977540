"""The trace viewer's rough edges (issue 17), in its pure functions run by Node (no browser
needed): a long round of blank lines drew a 9,000-px empty box, and the key field showed
while the page said no key was needed. The CSS side (a round scrolls in a capped box, a long
answer is cut in the results list) is checked on the stylesheet's text."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

STATIC = Path(__file__).parents[1] / "services" / "policy" / "static"


def run_node(tmp_path: Path, script: str) -> object:
    node = shutil.which("node")
    if node is None:
        pytest.skip("waits for Node.js to run the viewer's pure functions (apt-get install nodejs)")
    for path in STATIC.glob("*.js"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "check.js").write_text(script)
    out = subprocess.run(
        [node, "check.js"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout)


def test_blank_line_runs_are_folded(tmp_path: Path) -> None:
    """Pins: 500 newlines in a round rendered as 500 empty lines (a 9,000-px box)."""
    script = (
        'import { collapseBlankLines } from "./trace.js";\n'
        "const long = 'a' + '\\n'.repeat(500) + 'b';\n"
        "console.log(JSON.stringify([collapseBlankLines(long), collapseBlankLines('x\\n\\ny')]));"
    )
    folded, short = run_node(tmp_path, script)  # type: ignore[misc]
    assert folded.count("\n") <= 4 and "499 blank lines" in folded
    assert folded.startswith("a") and folded.endswith("b")
    assert short == "x\n\ny"  # one blank line is text, not a run


def test_key_field_only_where_a_key_is_wanted(tmp_path: Path) -> None:
    """Pins: the key field showed beside "no key needed"."""
    script = (
        'import { keyFieldWanted } from "./api.js";\n'
        "console.log(JSON.stringify([keyFieldWanted(false, ''), keyFieldWanted(true, ''),"
        " keyFieldWanted(false, 'k')]));"
    )
    assert run_node(tmp_path, script) == [False, True, True]
    viewer = (STATIC / "viewer.js").read_text()
    assert "keyFieldWanted(authRequired(), key)" in viewer


def test_stylesheet_caps_rounds_and_cuts_long_answers() -> None:
    """Pins: no height cap on a round's text, and a results-list answer column sized by its
    content (`auto`), so a long answer pushed past the list."""
    css = (STATIC / "viewer.css").read_text()
    round_text = re.search(r"\.round-text \{([^}]*)\}", css)
    assert round_text and "max-height" in round_text.group(1)
    record = re.search(r"\.record \{([^}]*)\}", css)
    assert record and "auto;" not in record.group(1).split("grid-template-columns")[1][:40]
    answer = re.search(r"\.record \.rec-a \{([^}]*)\}", css)
    assert answer and "text-overflow: ellipsis" in answer.group(1)
