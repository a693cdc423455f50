"""Every ``module.name`` our code reads from one of our modules exists.

The CPU tier never runs the GPU-only branches (the halo, TMA and PDL launches, the graphed
step's CUDA paths), so a renamed function they call would first fail on the GPU machine. This
reads the source instead: for each file of the package, the benchmarks, the scripts and the
tests, every attribute read through a name bound to a tritoncnn module (``import ... as K``,
``from tritoncnn.kernels import conv_halo``) must be defined by that module.
"""

import ast
import importlib
import re
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


def _doc_references(text: str) -> tuple[list[str], list[str]]:
    """(file paths, dotted or bare code names) in a Markdown text's backticks: ``a/b.py``,
    ``conv.py``, ``norm_fusion.store_tile_moments``, ``bn_stats_kernel``."""
    spans = [s.split("(")[0] for s in re.findall(r"`([^`\s]+)`", text)]
    files = [s for s in spans if s.endswith(".py") and "*" not in s]
    names = [s for s in spans if not s.endswith(".py") and s.replace(".", "").isidentifier()]
    return files, names


def test_the_kernel_tour_names_what_exists():
    """docs/kernels.md names files, kernels and functions: each file exists (from the
    repository root, from tritoncnn/, or a bare name in kernels/), each ``kernels_module.name``
    is defined there, and each bare snake_case name by a kernels module or nn.fusion, so the
    tour can't outlive a rename."""
    files, names = _doc_references((ROOT / "docs" / "kernels.md").read_text())
    assert len(files) > 15 and len(names) > 10
    kernels = ROOT / "tritoncnn" / "kernels"
    modules = {
        p.stem: importlib.import_module(f"tritoncnn.kernels.{p.stem}") for p in kernels.glob("*.py")
    }
    anywhere = [*modules.values(), importlib.import_module("tritoncnn.nn.fusion")]
    missing = []
    for f in files:
        if not any((base / f).is_file() for base in (ROOT, ROOT / "tritoncnn", kernels)):
            missing.append(f)
    for name in names:
        head, _, attr = name.rpartition(".")
        if head in modules and not hasattr(modules[head], attr):
            missing.append(name)
        if not head and "_" in name and not any(hasattr(m, name) for m in anywhere):
            missing.append(name)
    assert missing == []
