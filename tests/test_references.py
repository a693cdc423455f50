"""Every ``module.name`` our code reads from one of our modules exists.

The CPU tier never runs the GPU-only branches (the halo, TMA and PDL launches, the graphed
step's CUDA paths), so a renamed function they call would first fail on the GPU machine. This
reads the source instead: for each file of the package, the benchmarks, the scripts and the
tests, every attribute read through a name bound to a tritoncnn module (``import ... as K``,
``from tritoncnn.kernels import conv_halo``) must be defined by that module.
"""

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("tritoncnn", "benchmarks", "scripts", "tests")


def _module_aliases(tree: ast.Module) -> dict[str, str]:
    """{local name: tritoncnn module it is bound to} for the file's imports."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("tritoncnn") and a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tritoncnn"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                try:  # a module, not a function or class of one
                    importlib.import_module(full)
                except ImportError:
                    continue
                aliases[a.asname or a.name] = full
    return aliases


def _missing(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = _module_aliases(tree)
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Load)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            module = importlib.import_module(aliases[node.value.id])
            if not hasattr(module, node.attr):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_every_attribute_read_from_our_modules_exists():
    files = [p for d in SOURCES for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 50
    missing = [m for path in files for m in _missing(path)]
    assert missing == []


def test_a_missing_attribute_is_found(tmp_path, monkeypatch):
    """The check fails on a read of a name the module doesn't define."""
    monkeypatch.setattr("test_references.ROOT", tmp_path)
    src = tmp_path / "gpu_only.py"
    src.write_text(
        "from tritoncnn.kernels import conv_halo\n"
        "def launch():\n"
        "    return conv_halo.launch_halo_renamed()\n"
    )
    assert _missing(src) == ["gpu_only.py:3 conv_halo.launch_halo_renamed"]
