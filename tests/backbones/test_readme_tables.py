"""The README's generated tables: the writer, and that they list every registered backbone."""

import re
from pathlib import Path

import pytest

from backbones import list_backbones
from tools.readme import replace_generated_block

README = Path(__file__).parents[2] / "README.md"


def test_replace_generated_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- t: generated -->\nold\n<!-- end t -->\noutro\n")
    replace_generated_block(readme, "t", "| a |\n")
    assert readme.read_text() == "intro\n<!-- t: generated -->\n| a |\n<!-- end t -->\noutro\n"
    with pytest.raises(ValueError, match="no '<!-- other"):
        replace_generated_block(readme, "other", "x")


@pytest.mark.parametrize("marker", ["backbone-table", "compat-table"])
def test_readme_table_lists_every_backbone(marker):
    block = re.search(rf"<!-- {marker}:.*?-->\n(.*?)<!-- end {marker} -->", README.read_text(), re.S).group(1)
    missing = [n for n in list_backbones() if f"| `{n}` |" not in block and f"| {n} |" not in block]
    assert not missing, f"README {marker} is stale (regenerate it): missing {missing}"
