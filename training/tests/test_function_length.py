"""House style: no Python function in training/, scripts/ or bench/ runs over 80 lines (the Rust
crates' functions: tests/repository.rs)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_no_function_runs_over_80_lines():
    long = []
    for folder in ("training", "scripts", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if ".venv" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > 80:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines}")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)
