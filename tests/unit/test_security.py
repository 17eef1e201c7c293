"""Static checks behind SECURITY.md: no eval/exec, no pickle, safetensors only, pinned gradio."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([ROOT / "app.py", *(ROOT / "diffusion").rglob("*.py")])


def _calls(path: Path, attributes: bool = True) -> list[tuple[str, ast.Call]]:
    """Every call in ``path`` with the called name (``f(...)``, or ``obj.f(...)`` when ``attributes``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                found.append((func.id, node))
            elif attributes and isinstance(func, ast.Attribute):
                found.append((func.attr, node))
    return found


def test_no_eval_exec_or_pickle_anywhere():
    assert len(SOURCES) > 20
    for path in SOURCES:
        builtins = {name for name, _ in _calls(path, attributes=False)}  # re.compile is fine, compile() is not
        assert not builtins & {"eval", "exec", "compile", "__import__"}, path
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(pickle|dill|cloudpickle|marshal)\b", text, re.M), path
        assert "torch.load(" not in text and "allow_pickle=True" not in text, path


def test_every_from_pretrained_insists_on_safetensors():
    calls = 0
    for path in SOURCES:
        for name, node in _calls(path):
            if name == "from_pretrained":
                calls += 1
                keywords = {k.arg: k.value for k in node.keywords}
                assert "use_safetensors" in keywords, f"{path}:{node.lineno}"
                value = keywords["use_safetensors"]
                assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{node.lineno}"
    assert calls >= 4


def test_gradio_is_pinned_past_the_known_advisories_and_paths_stay_closed():
    requirement = next(line for line in (ROOT / "requirements.txt").read_text().splitlines()
                       if line.startswith("gradio"))
    low = re.search(r">=\s*(\d+)\.(\d+)", requirement)
    assert low and (int(low.group(1)), int(low.group(2))) >= (6, 16), requirement
    import app

    settings = app.settings_from_args(app.parse_args([]))
    kwargs = app.launch_kwargs(settings, app.create_app(settings)[1])
    assert kwargs["allowed_paths"] == [] and kwargs["max_file_size"] == "10mb"
    assert settings.allow_any_model is False and app.parse_args([]).host == "127.0.0.1"
