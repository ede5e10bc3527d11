"""scripts/<name>.py imported as a module, for the tests of its functions (no subprocess).

A helper module, not a conftest: test folders each have a conftest.py, and pytest keeps only the last one it
imported under the name `conftest`, so `from conftest import ...` is not reliable outside tests/ itself.
"""

import importlib
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script_module(name: str):
    """scripts/<name>.py as a module (`benchmark`, `results`)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPTS))
