"""The layers run one way. Every module under services/ and proto/ is parsed with ``ast`` (no
import, so this takes milliseconds) and each ``import`` in it, at any depth (a late import
inside a function is still a dependency), is checked against the ranks:

    proto < common < clients < zoom < models < engines < data
          < services (policy, magnifier, judge, trainer, eval) < cli

A module may import its own package, or one ranked lower. On top of that: nothing imports
``magsrl.policy`` except the policy itself and the CLI (serving, training and eval share the
episode through ``magsrl.zoom``, not through the policy's settings), and FastAPI/Starlette
appear only in app-layer modules.

``models`` sits above ``zoom``: loading a model needs its family (template, model types),
which ``magsrl.zoom.families`` defines, and nothing in the zoom core loads a model.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RANKS: dict[str, int] = {
    "proto": 0,
    "common": 1,
    "clients": 2,
    "zoom": 3,
    "models": 4,
    "engines": 5,
    "data": 6,
    "policy": 7,
    "magnifier": 7,
    "judge": 7,
    "trainer": 7,
    "eval": 7,
    "nano": 7,
    "cli": 8,
}
WEB_FRAMEWORKS = ("fastapi", "starlette")
# Modules of `common` that are the HTTP edge themselves: the error envelope and the ASGI
# middlewares every app installs, and the uvicorn runner.
EDGE_MODULES = frozenset(
    {
        "magsrl.common.app",
        "magsrl.common.http_errors",
        "magsrl.common.middleware",
        "magsrl.common.request_id",
        "magsrl.common.metrics",
        "magsrl.common.server",
    }
)

# Violations that exist today and are being fixed on another branch (`core`, issue 12).
# Each is (importing module, imported module). The lead empties this set after merging;
# test_known_violations_are_still_real fails as soon as an entry is fixed, so the list can
# only shrink, and anything not listed fails test_layers_run_one_way at once.
# Imports against the layering that are allowed for a stated reason. Empty: every layer
# runs one way. An entry needs a comment saying why and what would remove it.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name of the file
    imported: str  # dotted module name as written (relative imports resolved)
    line: int


def module_name(path: Path) -> str:
    """services/zoom/loop.py -> magsrl.zoom.loop; proto/tools.py -> magsrl.proto.tools."""
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    parts[0] = "magsrl.proto" if parts[0] == "proto" else "magsrl"
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    files = sorted((ROOT / "services").rglob("*.py")) + sorted((ROOT / "proto").rglob("*.py"))
    return [f for f in files if "__pycache__" not in f.parts]


def imports_of(path: Path) -> list[Import]:
    name = module_name(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from ..y import z
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append(Import(name, target, node.lineno))
            # `from magsrl.x import y` may name a submodule y: count it as magsrl.x.y too.
            found += [
                Import(name, f"{target}.{alias.name}", node.lineno)
                for alias in node.names
                if (ROOT / "services").joinpath(*f"{target}.{alias.name}".split(".")[1:]).is_dir()
                or _is_module(f"{target}.{alias.name}")
            ]
    return found


def _is_module(dotted: str) -> bool:
    parts = dotted.split(".")
    if parts[:2] == ["magsrl", "proto"]:
        base, rest = ROOT / "proto", parts[2:]
    elif parts[:1] == ["magsrl"]:
        base, rest = ROOT / "services", parts[1:]
    else:
        return False
    return bool(rest) and (base.joinpath(*rest).with_suffix(".py").is_file())


def package_of(dotted: str) -> str | None:
    """magsrl.zoom.loop -> zoom; magsrl.proto.x -> proto; the root package or a third-party
    module -> None."""
    parts = dotted.split(".")
    if parts[0] != "magsrl" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in RANKS else None


def is_app_layer(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return (
        last in ("api", "app")
        or last.endswith("_api")
        or package_of(module) == "cli"
        or module in EDGE_MODULES
    )


def violations(found: list[Import]) -> dict[tuple[str, str], str]:
    """(importer, imported) -> why it breaks the layering."""
    out: dict[tuple[str, str], str] = {}
    for imp in found:
        here, there = package_of(imp.importer), package_of(imp.imported)
        top = imp.imported.split(".")[0]
        if top in WEB_FRAMEWORKS and not is_app_layer(imp.importer):
            out[(imp.importer, top)] = f"line {imp.line}: {top} below the app layer"
            continue
        if here is None or there is None or here == there:
            continue
        key = (imp.importer, _module_part(imp.imported))
        if there == "policy" and here != "cli":
            out[key] = f"line {imp.line}: only the CLI may import magsrl.policy"
        elif RANKS[there] > RANKS[here]:
            out[key] = f"line {imp.line}: {here} ({RANKS[here]}) imports {there} ({RANKS[there]})"
    return out


def _module_part(dotted: str) -> str:
    """The longest prefix of ``dotted`` that is a module or package on disk."""
    parts = dotted.split(".")
    for end in range(len(parts), 1, -1):
        candidate = ".".join(parts[:end])
        if _is_module(candidate) or _is_package(candidate):
            return candidate
    return dotted


def _is_package(dotted: str) -> bool:
    parts = dotted.split(".")
    base, rest = (
        (ROOT / "proto", parts[2:])
        if parts[:2] == ["magsrl", "proto"]
        else (
            ROOT / "services",
            parts[1:],
        )
    )
    return (base.joinpath(*rest) / "__init__.py").is_file()


@pytest.fixture(scope="module")
def all_imports() -> list[Import]:
    return [imp for path in source_files() for imp in imports_of(path)]


def test_layers_run_one_way(all_imports: list[Import]) -> None:
    """Pins: a lower layer reaching up (common importing the CLI, proto importing data, the
    trainer borrowing the policy's settings), which is how serving and training drifted
    apart; or FastAPI pulled in below the app layer by a plain module."""
    found = violations(all_imports)
    new = {k: why for k, why in found.items() if k not in KNOWN_VIOLATIONS}
    assert not new, "imports against the layering:\n" + "\n".join(
        f"  {a} -> {b}: {why}" for (a, b), why in sorted(new.items())
    )


def test_known_violations_are_still_real(all_imports: list[Import]) -> None:
    """Pins: a stale allowance. Once a known violation is fixed its entry must go, or the
    same import could come back unnoticed."""
    found = violations(all_imports)
    stale = sorted(KNOWN_VIOLATIONS - found.keys())
    assert not stale, f"fixed; remove from KNOWN_VIOLATIONS: {stale}"


@pytest.mark.parametrize(
    ("importer", "imported", "bad"),
    [
        pytest.param("magsrl.common.redis_server", "magsrl.cli.supervisor", True, id="common-cli"),
        pytest.param("magsrl.proto.rollout", "magsrl.data.sample", True, id="proto-data"),
        pytest.param("magsrl.trainer.worker", "magsrl.policy.config", True, id="trainer-policy"),
        pytest.param("magsrl.cli.up", "magsrl.policy.app", False, id="cli-policy"),
        pytest.param("magsrl.policy.api", "magsrl.zoom.loop", False, id="policy-zoom"),
        pytest.param("magsrl.zoom.loop", "fastapi", True, id="fastapi-in-core"),
        pytest.param("magsrl.judge.api", "fastapi", False, id="fastapi-in-api"),
        pytest.param("magsrl.engines.hf", "magsrl.zoom.engine", False, id="engines-zoom"),
        pytest.param("magsrl.zoom.loop", "magsrl.engines.hf", True, id="zoom-engines"),
    ],
)
def test_the_checker_itself(importer: str, imported: str, bad: bool) -> None:
    """Pins: a checker that passes everything (a wrong rank table or package parse)."""
    assert bool(violations([Import(importer, imported, 1)])) is bad


def test_every_module_is_seen(all_imports: list[Import]) -> None:
    """Pins: a walk that silently skips a package (the check would then pass vacuously)."""
    packages = {package_of(module_name(p)) for p in source_files()}
    assert set(RANKS) <= packages, f"no modules found for {set(RANKS) - packages}"


def test_every_package_has_a_rank() -> None:
    """Pins: a new package under services/ that the checker silently ignores (its imports
    would never be checked); place it in RANKS and in docs/architecture.md."""
    packages = {p.parent.name for p in (ROOT / "services").glob("*/__init__.py")}
    assert packages <= set(RANKS), f"no layer rank for {sorted(packages - set(RANKS))}"
