"""The README's front matter is what the Hugging Face Hub reads to build the Space: keep it valid."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
COLOURS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}  # the Hub's card colours


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with a YAML block between --- lines"
    return yaml.safe_load(match.group(1))


def test_the_front_matter_has_the_fields_the_hub_requires():
    meta = front_matter()
    assert isinstance(meta["title"], str) and 0 < len(meta["title"]) <= 30
    assert meta["sdk"] == "gradio" and (ROOT / meta["app_file"]).is_file()
    assert meta["colorFrom"] in COLOURS and meta["colorTo"] in COLOURS
    assert isinstance(meta["emoji"], str) and 0 < len(meta["emoji"]) <= 2
    assert len(meta.get("short_description", "")) <= 60
    assert isinstance(meta["python_version"], str)  # a bare 3.10 would be read as the number 3.1
    # The Space installs the gradio the card names: it must be one requirements.txt allows.
    line = next(l for l in (ROOT / "requirements.txt").read_text().splitlines() if l.startswith("gradio"))
    assert Requirement(line.split("#")[0].strip()).specifier.contains(str(meta["sdk_version"]))


def test_the_space_installs_the_chinese_font():
    packages = (ROOT / "packages.txt").read_text().split()
    assert "fonts-wqy-microhei" in packages
