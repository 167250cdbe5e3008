"""One-way layers: modeling <- evaluation <- mosaic <- distillation <- hub <- command line.

Every import of every module of the package (function-local ones included) is read with `ast` and resolved to the
module it names; a module may import its own layer and the layers below it, never one above. The remote code in
`modeling/` imports only the standard library, torch, transformers (and what transformers itself needs) and its
own files, so that an exported folder loads without this package.
"""

import ast
import sys
from pathlib import Path

import pytest

import transformers_samclip

PACKAGE = "transformers_samclip"
LAYERS = ("modeling", "evaluation", "mosaic", "distillation", "hub", "command line")
# Top-level modules and folders of the package, by layer. The leaves (the package's own __init__, which registers
# the model, the pipeline classes, atomic writes, the shared CLI checks, metric scripts, data) sit at the bottom:
# every layer may use them, and they use nothing above modeling.
LAYER_OF = {
    "modeling": "modeling",
    "": "modeling",
    "pipelines": "modeling",
    "_atomic": "modeling",
    "_cli": "modeling",
    "metrics": "modeling",
    "hub_cards": "modeling",
    "recipes": "modeling",
    "evaluation": "evaluation",
    "mosaic": "mosaic",
    "distillation": "distillation",
    "hub": "hub",
    "cli": "command line",
    "evaluate_cli": "command line",
    "demo": "command line",
}
# What the remote code may import besides the standard library and its own files: torch, transformers, and
# transformers' own dependencies (installed wherever transformers is).
MODELING_THIRD_PARTY = {"torch", "transformers", "numpy", "PIL", "huggingface_hub"}


def _package_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the installed package (mapped folders included)."""
    modules = {}
    roots = {PACKAGE: Path(transformers_samclip.__file__).parent}
    for sub in ("modeling", "demo"):
        module = __import__(f"{PACKAGE}.{sub}", fromlist=["_"])
        roots[f"{PACKAGE}.{sub}"] = Path(module.__file__).parent
    for prefix, root in roots.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([prefix, *parts])
            modules.setdefault(name, path)
    return modules


MODULES = _package_files()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """`(imported module, line)` for every import in the file, relative imports resolved against `name`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            for alias in node.names:
                # `from .. import mosaic` names a module; `from .. import SamClipModel` an attribute of `base`.
                submodule = f"{base}.{alias.name}"
                found.append((submodule if submodule in MODULES else base, node.lineno))
    return found


def _layer(module: str) -> str | None:
    """The layer of a module of the package (None for anything else)."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    top = module[len(PACKAGE) + 1 :].split(".")[0]
    if top not in LAYER_OF:
        raise AssertionError(f"{module}: a new top-level module; give it a layer in tests/test_layers.py LAYER_OF")
    return LAYER_OF[top]


def test_every_layer_has_modules():
    assert {_layer(name) for name in MODULES} == set(LAYERS)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_the_layers_only(name):
    own = _layer(name)
    wrong = [
        f"line {line}: {module} ({_layer(module)})"
        for module, line in _imports(name, MODULES[name])
        if _layer(module) is not None and LAYERS.index(_layer(module)) > LAYERS.index(own)
    ]
    assert not wrong, f"{name} ({own}) imports from a layer above it: " + "; ".join(wrong)


def test_leaves_use_nothing_above_modeling():
    """The shared CLI checks and atomic writes are leaves: any command module of any layer can import them."""
    for leaf in (f"{PACKAGE}._cli", f"{PACKAGE}._atomic"):
        imported = {module for module, _ in _imports(leaf, MODULES[leaf]) if _layer(module) is not None}
        assert all(module.startswith(f"{PACKAGE}.modeling") for module in imported), (leaf, imported)


@pytest.mark.parametrize("name", sorted(name for name in MODULES if name.startswith(f"{PACKAGE}.modeling")))
def test_modeling_imports_only_torch_transformers_stdlib_and_itself(name):
    wrong = []
    for module, line in _imports(name, MODULES[name]):
        top = module.split(".")[0]
        if module.startswith(f"{PACKAGE}.modeling") or top in sys.stdlib_module_names or top == "__future__":
            continue
        if top not in MODELING_THIRD_PARTY:
            wrong.append(f"line {line}: {module}")
    assert not wrong, f"{name} (remote code) imports: " + "; ".join(wrong)


def test_the_rules_catch_a_wrong_import(tmp_path):
    """The checker itself: evaluation importing mosaic, and modeling importing the package, are both caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ..mosaic import make_mosaic_dataset\n    from .. import hub\n")
    resolved = [module for module, _ in _imports(f"{PACKAGE}.evaluation.bad", bad)]
    assert resolved == [f"{PACKAGE}.mosaic", f"{PACKAGE}.hub"]
    assert [_layer(module) for module in resolved] == ["mosaic", "hub"]
    bad.write_text("from ..evaluation import geometry\n")
    assert _imports(f"{PACKAGE}.modeling.bad", bad) == [(f"{PACKAGE}.evaluation.geometry", 1)]
