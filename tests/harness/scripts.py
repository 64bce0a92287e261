"""Loading a file of ``scripts/`` (a bench helper, or the extensionless ``badlink``) as a module
under test: they are not in the ``medcomm`` package, and ``scripts/`` is not on the path."""

from __future__ import annotations

import importlib.util
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_script(relative: str, name: str) -> ModuleType:
    """``scripts/<relative>`` as module ``name`` (registered in ``sys.modules``: dataclasses
    resolve their annotations through it)."""
    loader = SourceFileLoader(name, str(SCRIPTS / relative))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
