"""Install the CuPy stand-in (``tests/cudaemu/cupy``) as the module ``cupy``.

``install()`` loads the package under the name ``cupy`` (``sys.modules["cupy"]`` is set
before its code runs, and its submodule search path is the stand-in's directory), so that
``import cupy``, ``import cupy.cuda`` and ``from cupy.cuda import graph`` resolve to it and
its classes' ``__module__`` starts with "cupy" (``gpugd.backend._library_of``).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent / "cupy"


def installed() -> bool:
    """Whether ``sys.modules["cupy"]`` is the stand-in."""
    mod = sys.modules.get("cupy")
    return mod is not None and getattr(mod, "STANDIN", False) is True


def install() -> types.ModuleType:
    """Make ``import cupy`` give the stand-in (idempotent); return the module.

    Refused when another ``cupy`` (the real one) was imported already: mixing the two
    would mix their arrays."""
    if installed():
        return sys.modules["cupy"]
    for name in list(sys.modules):
        if (name == "cupy" or name.startswith("cupy.")) and sys.modules[name] is not None:
            raise RuntimeError(
                f"cannot install the CuPy stand-in: {name} is already imported "
                f"({getattr(sys.modules[name], '__file__', '?')})"
            )
    for name in [n for n in sys.modules if n == "cupy" or n.startswith("cupy.")]:
        del sys.modules[name]  # None entries (a failed import of the real one)
    spec = importlib.util.spec_from_file_location(
        "cupy", PACKAGE_DIR / "__init__.py", submodule_search_locations=[str(PACKAGE_DIR)]
    )
    module = importlib.util.module_from_spec(spec)
    module._EMULATOR_PACKAGE = __package__ or "cudaemu"
    sys.modules["cupy"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for name in [n for n in sys.modules if n == "cupy" or n.startswith("cupy.")]:
            del sys.modules[name]
        raise
    return module
