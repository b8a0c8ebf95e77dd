"""The docs stay true: generated blocks match their sources, links and commands exist, prose cites no numbers.

Measured numbers live only in generated blocks (`docs/generate.py` renders them from result JSON,
directions/index.yaml and architectures.py); prose around them may not restate a measurement,
since a hand-copied number is the one that drifts.
"""

from __future__ import annotations

import re
import shlex

import pytest

from rosi_vllm.cli import build_parser
from tests.helpers import ROOT, deploy_script

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md",
             ROOT / "research" / "README.md"]
FENCE = re.compile(r"```.*?```", re.S)
GENERATED = re.compile(r"<!-- generated:([\w-]+) -->.*?<!-- /generated:\1 -->", re.S)
#: a measurement in prose: a percentage (other than the 95 % interval level), a ratio, a duration or size
MEASURED = re.compile(r"(?<![\w.])(?!95 %)\d+(\.\d+)?\s?%|×\s?\d|\d\s?×|\b\d+(\.\d+)?\s?(ms|s|GB|GiB|MiB|nats)\b")


def _generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prose(text: str) -> str:
    text = GENERATED.sub("", FENCE.sub("", text))
    return "\n".join(line for line in text.splitlines() if not line.startswith("    "))  # indented code


def test_generated_blocks_match_their_sources():
    generator = _generator()
    assert generator.stale() == []
    for path in DOC_FILES:
        for name in re.findall(r"<!-- generated:([\w-]+) -->", path.read_text()):
            assert name in generator.RENDERERS, f"{path.name}: unknown block {name}"


def test_a_stale_block_is_detected():
    generator = _generator()
    text = (ROOT / "README.md").read_text()
    block = GENERATED.search(text)
    assert block, "the README has no generated block"
    body = block.group(0)
    tampered = text.replace(body, body.replace("-->\n", "-->\n1 % ", 1), 1)  # a hand edit inside the block
    assert tampered != text and generator.render(tampered) == text


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


@pytest.mark.parametrize("path", DOC_FILES + [ROOT / "deploy/README.md", ROOT / "directions/README.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_named_files_exist(path):
    text = path.read_text()
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", text)
             if not link.startswith(("http://", "https://", "#"))]
    named = re.findall(r"`((?:rosi_vllm|tests|benchmarks|research|deploy|directions|docs|scripts)/[\w./-]+)`", text)
    missing = [p for p in links if not (path.parent / p).exists()]
    missing += [p for p in named if "{" not in p and "*" not in p and not (ROOT / p).exists()]
    assert not missing, missing


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_prose_states_no_measured_numbers(path):
    found = [m.group(0) + " in: " + line.strip()[:100] for line in _prose(path.read_text()).splitlines()
             for m in MEASURED.finditer(line)]
    assert not found, found


def test_every_rosi_command_in_the_docs_parses():
    parser = build_parser()
    seen = 0
    for path in DOC_FILES:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s\[[^\]]*\]", "", line.split("  #")[0]).strip()  # optional [--flag X] groups
                if not line.startswith("rosi ") or "..." in line:
                    continue
                argv = shlex.split(line)[1:]
                if "--help" in argv:
                    continue
                try:
                    parser.parse_args(argv)
                except SystemExit as exc:
                    pytest.fail(f"{path.name}: `{line}` does not parse ({exc})")
                seen += 1
    assert seen >= 5


def test_architecture_table_names_every_family():
    from rosi_vllm.core.architectures import ARCHITECTURES

    serving = (ROOT / "docs/serving.md").read_text()
    assert all(f"| {spec.family} |" in serving for spec in ARCHITECTURES)
    assert deploy_script  # the deploy docs are covered by the link test above
