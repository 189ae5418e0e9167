"""The published (full-mode) book, where it has been executed here (`make book`): every relation the prose
claims was checked on the executed outputs and held.

In full mode :func:`latentbook.chapter.claim` stops a chapter whose numbers contradict its prose, so an
executed chapter already passed its claims; this test reads the executed notebooks and asserts it, for the
chapters whose execution is current (same source, parameters and helper code). Skipped where the full
book has not been built (CI builds only the smoke book).
"""

import json
import re
from pathlib import Path

import nbformat
import pytest

from latentbook import build

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "_executed" / "full"


def _current(stem: str) -> bool:
    stamp = FULL / f"{stem}.json"
    if not (stamp.is_file() and (FULL / f"{stem}.ipynb").is_file()):
        return False
    recorded = json.loads(stamp.read_text())
    return build.stale(ROOT, stem, recorded.get("params", {}), FULL) is None


@pytest.mark.parametrize("stem", build.chapters(ROOT))
def test_full_mode_claims_held(stem):
    if not _current(stem):
        pytest.skip(f"no current full-mode execution of {stem} here (run `make book`)")
    nb = nbformat.read(FULL / f"{stem}.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")
    assert "not in this" not in text
    source = (ROOT / "book" / f"{stem}.md").read_text()
    claims = len(re.findall(r"^\s*claim\(run,", source, flags=re.M))
    # a claim inside a loop prints once per pass: at least one "checked" line per claim() call
    assert text.count("checked: ") >= claims, (stem, claims, text.count("checked: "))
    assert 'MODE = "full"' in "".join(c.source for c in nb.cells)


@pytest.mark.slow
def test_nbval_on_the_full_execution(tmp_path):
    """nbval on the published execution, where one is current here: every full chapter executed again on
    the stored models (retraining all of them would take most of an hour) prints the same key numbers."""
    from conftest import run_nbval

    stems = [stem for stem in build.chapters(ROOT) if _current(stem)]
    if not stems:
        pytest.skip("no current full-mode execution here (run `make book`)")
    proc = run_nbval(FULL, stems, tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:]


def test_the_zoo_names_the_chapters_that_use_each_model():
    """zoo.CHAPTERS (which models a parallel build trains before which chapters) is what the executed chapters
    recorded: each current full chapter read exactly the store entries of the models listed for it."""
    from latentbook import store, zoo
    from latentbook.chapter import start

    stems = [stem for stem in build.chapters(ROOT) if _current(stem)]
    if not stems:
        pytest.skip("no current full-mode execution here (run `make book`)")
    run = start("full", "cpu", quiet=True)
    key = {name: store.key_of(zoo.config(name, run)) for name in zoo.RECIPES}
    for stem in stems:
        recorded = set(json.loads((FULL / f"{stem}.json").read_text())["entries"]) & set(key.values())
        assert recorded == {key[n] for n in zoo.models_for([stem])}, stem
