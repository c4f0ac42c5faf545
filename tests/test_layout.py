"""The repository's layout: utils.py is the learner's file, support/ the machinery, one import direction.

- every top-level name of utils.py is used by a notebook, directly or through a utils function a notebook uses;
- utils.py's section headers follow the notebooks' order and name the notebook that teaches them;
- utils.py stays short enough to read (at most 1,800 lines as ruff formats it);
- train_model stays a loop a learner can read: at most 80 lines, few parameters, no DDP object in any signature;
- support/ never imports utils (or finetune): utils imports from support, never the other way round.
"""

import ast
import json
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
UTILS = REPO_ROOT / "utils.py"
# The final numbering of the notebooks (notes/BRIEF.md): a header names the notebook that teaches its code.
NOTEBOOKS = {
    1: "instruction dataset",
    2: "prompt formatting",
    3: "tokenization and batching",
    4: "dataloaders",
    5: "gpt2 model",
    6: "pretrained weights",
    7: "finetuning",
    8: "generation and evaluation",
    9: "preference tuning",
    10: "exercises",
    11: "solutions",
}


def utils_tree() -> ast.Module:
    return ast.parse(UTILS.read_text(encoding="utf-8"))


def top_level_definitions(tree: ast.Module) -> dict[str, ast.AST]:
    """Functions, classes and assigned names defined at the top of utils.py (imports excluded)."""
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        found[name.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found[node.target.id] = node
    return found


def referenced_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def notebook_uses(names: set[str]) -> set[str]:
    """The utils names that notebook code cells import from utils, or mention (a draft checked against utils)."""
    used = set()
    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
            tree = ast.parse(source)  # a cell that does not parse fails here, and says which
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module == "utils":
                    used |= {alias.name for alias in node.names}
            used |= referenced_names(tree) & names
    return used


def test_every_name_in_utils_is_used_by_a_notebook():
    definitions = top_level_definitions(utils_tree())
    references = {name: referenced_names(node) & set(definitions) for name, node in definitions.items()}
    reached, todo = set(), [name for name in notebook_uses(set(definitions)) if name in definitions]
    while todo:  # the names the notebooks use, and every utils name those use in turn
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += references[name] - reached
    unused = sorted(set(definitions) - reached)
    assert not unused, (
        f"utils.py defines names no notebook uses, directly or through a utils function: {unused}. "
        "Teach them in a notebook, or move them to support/ (or where their only user lives)."
    )


def test_the_reachability_check_can_fail():
    # the same computation on a module with one unused helper finds exactly that one
    tree = ast.parse("def used():\n    return helper()\n\ndef helper():\n    return 1\n\ndef orphan():\n    return 2\n")
    definitions = top_level_definitions(tree)
    references = {name: referenced_names(node) & set(definitions) for name, node in definitions.items()}
    reached, todo = set(), ["used"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += references[name] - reached
    assert sorted(set(definitions) - reached) == ["orphan"]


def test_sections_follow_the_notebooks_and_name_them():
    headers = [line for line in UTILS.read_text(encoding="utf-8").splitlines() if line.startswith("# --- ")]
    assert len(headers) >= 10
    numbers = []
    for header in headers:
        match = re.match(r"# --- (\d\d) ([a-z0-9 ]+): .+ ---$", header)
        assert match, f"a section header names its notebook as '# --- NN name: what ---': {header!r}"
        number, name = int(match.group(1)), match.group(2)
        assert NOTEBOOKS.get(number) == name, f"{header!r}: notebook {number:02d} is {NOTEBOOKS.get(number)!r}"
        numbers.append(number)
    assert numbers == sorted(numbers), f"sections out of notebook order: {numbers}"


def test_utils_stays_short_enough_to_read():
    n_lines = len(UTILS.read_text(encoding="utf-8").splitlines())
    assert n_lines <= 1800, (
        f"utils.py has {n_lines} lines: move what no notebook teaches to support/ (the machinery) "
        "or to the notebook scaffolding there (support/plots.py, support/experiments.py)"
    )


def test_train_model_reads_like_the_course_loop():
    tree = utils_tree()
    train_model = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "train_model")
    n_params = len(train_model.args.args) + len(train_model.args.kwonlyargs)
    assert n_params <= 14, n_params
    # signature and docstring included, as ruff formats them (one parameter a line)
    n_lines = train_model.end_lineno - train_model.lineno + 1
    assert n_lines <= 80, f"train_model is {n_lines} lines: move what is not the loop into a helper or the hooks"
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            names = [a.arg for a in node.args.args + node.args.kwonlyargs]
            assert not {"dist", "ddp", "world_size", "local_rank"} & set(names), f"{node.name}({', '.join(names)})"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            assert not any(m.startswith(("torch.distributed", "torch.nn.parallel")) for m in modules), modules


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "support").glob("*.py")), ids=lambda p: p.name)
def test_support_never_imports_utils(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            assert module.split(".")[0] not in ("utils", "finetune"), (
                f"{path.name} line {node.lineno} imports {module}: support/ must not import utils or finetune"
            )


def test_support_imports_without_utils(tmp_path):
    # a fresh interpreter: importing every support module must not pull utils in
    import subprocess
    import sys

    modules = sorted(p.stem for p in (REPO_ROOT / "support").glob("*.py") if p.stem != "__init__")
    code = (
        "import sys\n"
        + "".join(f"import support.{m}\n" for m in modules)
        + "assert 'utils' not in sys.modules, 'support imported utils'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
