"""The documents name the files qa.predict and the evaluation write as they are written (qa.eval.outputs)."""

from __future__ import annotations

import re
from pathlib import Path

from qa.eval.outputs import companion_paths

REPO = Path(__file__).resolve().parents[3]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_output_name_mapping_in_the_readme_is_what_is_written() -> None:
    text = " ".join(" ".join(p.read_text().split()) for p in DOCUMENTS)
    pairs = re.findall(r"`([\w.]+\.json)` -> `([\w.]+\.json)`", text)
    assert ("X.json", "X_nbest.json") in pairs  # qa.predict --output p.json writes p_nbest.json
    for given, nbest in pairs:
        assert companion_paths(Path(given))[0].name == nbest, (given, nbest)
    # No sentence may promise nbest_predictions.json beside an output of any name.
    assert "writes `{id: answer}` plus `nbest_predictions.json` beside it" not in text
