"""Optional features and the pip extra that brings each: a missing one is one `error:` line."""

from __future__ import annotations

import importlib
from types import ModuleType

from src.errors import UserError

DISTRIBUTION = "smollm2-lightning"


def require_extra(module: str, extra: str, needed_by: str) -> ModuleType:
    """Import `module`, or say which extra installs it: `<needed_by> needs <module>: pip install ...`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f'{needed_by} needs {module}: pip install "{DISTRIBUTION}[{extra}]"') from None
