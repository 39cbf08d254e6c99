"""Standard-library modules imported on first use, not on `import`.

structlog imports `asyncio` when it loads, but uses it only in async
logging methods graceshell never calls; it costs about a quarter of a run's
instructions. A deferred module is a stand-in in `sys.modules`: `import
asyncio` binds the stand-in, and its first attribute lookup imports the
real module, copies it into the stand-in and puts the real one back. Nothing is replaced, only postponed;
code that does use the module gets the real thing, one import later.

Only graceshell's own process defers anything: the worker is exec'd with
a fresh interpreter, and the integrations never call this.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any

_ModuleType = type(sys)


class _Deferred(_ModuleType):  # type: ignore[misc, valid-type]
    """A module not imported yet. `__getattr__` runs only for names the
    stand-in lacks, which before the import is every name."""

    def __getattr__(self, attribute: str) -> Any:
        return getattr(_load(self), attribute)


def _load(stand_in: Any) -> Any:
    name = stand_in.__name__
    if sys.modules.get(name) is stand_in:
        del sys.modules[name]
    __import__(name)
    real = sys.modules[name]
    # Every later lookup through a reference to the stand-in finds the real
    # module's names directly.
    stand_in.__dict__.update(real.__dict__)
    return real


def defer(*names: str) -> None:
    """Postpone the import of top-level modules not imported yet."""
    for name in names:
        if name not in sys.modules:
            sys.modules[name] = _Deferred(name)  # its __spec__ is None: `import` takes it as loaded
