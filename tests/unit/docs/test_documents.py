"""What README.md and docs/*.md say besides their commands (tests/unit/docs/test_documented_commands.py runs those):
the README's outline, links between the pages, and the README's YAML, JSONL and Python examples as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from documents import DOCUMENTS, blocks
from fixtures import REPO, make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_readme_is_short_and_starts_with_its_title() -> None:
    """A newcomer's page: the title first, about 250 lines at most; reference material lives in docs/*.md."""
    lines = (REPO / "README.md").read_text().splitlines()
    assert lines[0].startswith("# "), lines[0]
    assert len(lines) <= 260, f"README.md has {len(lines)} lines; move reference material to docs/*.md"
    headings = [line for line in lines if line.startswith("## ")]
    for section in ("## Two commands", "## Installing without make", "## How a run flows", "## Layout",
                    "## Configuration", "## Troubleshooting"):
        assert section in headings, section


# Pages written on other branches that the README already links; each must exist once its branch is merged.
PAGES_FROM_OTHER_BRANCHES: set[str] = set()  # pages another branch adds, allowed missing until merged


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown page."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("document", DOCUMENTS)
def test_links_between_documents_resolve(document: str) -> None:
    """Every relative link of README.md and docs/*.md names a page that exists and, with #anchor, its heading."""
    source = REPO / document
    links = re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", source.read_text(), flags=re.S))
    for link in (link for link in links if not re.match(r"[a-z]+:", link)):
        target, _, anchor = link.partition("#")
        page = (source.parent / target).resolve() if target else source
        name = str(page.relative_to(REPO)) if page.is_relative_to(REPO) else str(page)
        if name in PAGES_FROM_OTHER_BRANCHES and not page.exists():
            continue
        assert page.is_file(), f"{document}: link to a missing page: {link}"
        if anchor and page.suffix == ".md":
            assert anchor in _anchors(page), f"{document}: no heading for #{anchor} in {name}"


def test_readme_run_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's YAML is a run config as written: every key known, every value accepted, files found."""
    from qa.preflight.config_checks import load_and_check

    (block,) = blocks("README.md", "yaml")
    path = tmp_path / "run.yaml"
    path.write_text(block)
    monkeypatch.chdir(REPO)  # its paths are relative to the repository, where the README's commands run
    cfg = load_and_check(["--config", str(path)]).to_dict()
    written = yaml.safe_load(block)
    assert {k: cfg[k] for k in written} == written
    assert (REPO / cfg["deepspeed"]).is_file()


def test_readme_data_line_is_training_data(tmp_path: Path) -> None:
    """The README's JSONL line reads as a labelled training example whose answer_start points at its answer."""
    from qa.data.formats import check_alignment, read_squad_file

    (block,) = blocks("README.md", "json")
    path = tmp_path / "train.jsonl"
    path.write_text(block)
    records = read_squad_file(path)
    assert len(records) == len(block.strip().splitlines()) >= 1
    assert check_alignment(records, str(path), skip=False, is_train=True) == (records, 0)


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if any("QuestionAnswerer" in b for b in blocks(d, "python"))])
def test_documented_question_answerer_answers(document: str, tiny: Path) -> None:
    """Each QuestionAnswerer example runs as written (the exported model replaced by a tiny one) and answers with
    a span of its context."""
    (block,) = [b for b in blocks(document, "python") if "QuestionAnswerer" in b]
    code = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    code = [re.sub(r'from_pretrained\("[^"]+"', f'from_pretrained("{tiny}"', line) for line in code]
    namespace: dict = {}
    exec("\n".join(code[:-1]), namespace)
    context = re.search(r'context="([^"]+)"', code[-1]).group(1)
    answer = eval(code[-1].split("  #")[0], namespace)
    assert {"answer", "score", "start", "end"} <= set(answer)
    assert context[answer["start"]:answer["end"]] == answer["answer"]
