"""The package's shape, checked from its source: imports run one way (no cycles, no layer importing the
layer above it, function-local imports included), and no module or function grows past a few screens."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "learnforget"
# Each layer may import itself and the layers after it: cli -> advise -> study -> report -> {train, evaluate, analysis} -> core.
# report is below study (the study writes it) and reads only results.json: it imports no stage. advise (forecasts
# from pilot runs) runs studies' pieces, so only cli imports it.
LAYERS = [{"cli"}, {"advise"}, {"study"}, {"report"}, {"train", "evaluate", "analysis"}, {"core"}]
STAGES = {"train", "evaluate", "analysis"}
ALLOWED_SIDEWAYS = {("analysis", "evaluate")}  # diversity samples and scores solutions with evaluate's generation and tasks
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def _layer(mod: str) -> str:
    part = mod.split(".")[1] if "." in mod else "core"
    return part if any(part in layer for layer in LAYERS[:-1]) else "core"


def _graph():
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}, mods


def test_no_import_cycles():
    graph, _ = _graph()
    # a package's __init__ re-exporting its own modules is not a cycle of the design: only count edges between
    # modules where neither is a package containing the other
    edges = {m: {t for t in ts if not (t.startswith(m + ".") or m.startswith(t + "."))} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in edges[m]:
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_run_one_way():
    graph, _ = _graph()
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    wrong = []
    for m, targets in graph.items():
        a = _layer(m)
        for t in targets:
            b = _layer(t)
            if a == b or (a, b) in ALLOWED_SIDEWAYS:
                continue
            if rank[b] < rank[a] or (a in STAGES and b in STAGES):
                wrong.append(f"{m} ({a}) imports {t} ({b})")
    assert not wrong, "\n".join(wrong)


def test_modules_and_functions_stay_small():
    _, mods = _graph()
    big = [f"{m}: {n} lines" for m, p in mods.items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    long_fns = []
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long_fns.append(f"{m}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not big and not long_fns, big + long_fns
