"""The kernel (shared/) imports no service package: a service depends on the kernel, never
the other way round (design.md). Checked in a fresh interpreter, where nothing else has
imported ``services`` first."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def kernel_modules() -> list[str]:
    return sorted(f"shared.{p.stem}" for p in (ROOT / "shared").glob("*.py") if p.stem != "__init__")


def test_importing_every_kernel_module_imports_no_service():
    modules = kernel_modules()
    assert "shared.migrations" in modules and "shared.config" in modules
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(json.dumps([m for m in sys.modules if m == 'services' or m.startswith('services.')]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_no_kernel_source_names_a_service_package():
    """Also the imports a function makes only when called (shared.migrations used to)."""
    for path in sorted((ROOT / "shared").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            stripped = line.strip()
            assert not (stripped.startswith(("import services", "from services"))
                        or "import_module(\"services" in stripped or "import_module(f\"services" in stripped), \
                f"{path.relative_to(ROOT)}:{number}: {stripped}"
