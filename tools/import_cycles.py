"""Lists import cycles among the package's modules (every import, lazy ones inside functions included).

python -m tools.import_cycles [package_dir]: prints each cycle, exits 1 when there is one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is not an edge
                found.add(t)
    return found


def cycles(root: Path) -> list[list[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = {m: imports(p, m, set(files)) for m, p in files.items()}
    seen: set[tuple[str, ...]] = set()
    out: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                loop = path[path.index(nxt):]
                key = tuple(sorted(loop))
                if key not in seen:
                    seen.add(key)
                    out.append(loop + [nxt])
            elif len(path) < 12:
                walk(nxt, path + [nxt])

    for m in sorted(graph):
        walk(m, [m])
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "gptoss_space").resolve()
    found = cycles(root)
    for loop in found:
        print(" -> ".join(loop))
    print(f"{len(found)} import cycle(s) in {root.name}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
