"""Settings with their origin, and how the layers of configuration combine.

Every effective value remembers where it came from (a flag, a line of
graceshell.yml, a preset, the platform, the built-in default), so that an
error can name the place to fix and `graceshell check` can show why a value
is what it is.

Layers, weakest first: built-in < platform < preset < `defaults:` <
`processes.<type>:` < flags. `remap` and `env` merge key by key; every other
setting is replaced whole by a stronger layer.
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

MERGED_BY_KEY = frozenset({"remap", "env"})


class Origin:
    """Where a value was written: `--budget`, `graceshell.yml:7: processes.worker.budget`, `preset celery`."""

    __slots__ = ("label", "item_labels")

    def __init__(self, label: str, item_labels: list[str] | None = None) -> None:
        self.label = label
        self.item_labels = item_labels  # one per list item, for per-step errors

    def item(self, index: int) -> str:
        if self.item_labels is not None and index < len(self.item_labels):
            return self.item_labels[index]
        return f"{self.label} step {index + 1}"

    def __str__(self) -> str:
        return self.label

    def __repr__(self) -> str:
        return f"Origin({self.label!r})"


class Setting(namedtuple("Setting", "value origin")):
    __slots__ = ()
    value: Any
    origin: Origin


def value_of(settings: Mapping[str, Setting], key: str, default: Any = None) -> Any:
    """The value of `key` in `settings`, or `default` when no layer set it."""
    setting = settings.get(key)
    return setting.value if setting is not None else default


def merge(layers: Iterable[Mapping[str, Setting]]) -> dict[str, Setting]:
    """Combine layers given weakest first."""
    merged: dict[str, Setting] = {}
    for layer in layers:
        for key, setting in layer.items():
            if key in MERGED_BY_KEY and key in merged:
                combined = {**merged[key].value, **setting.value}
                merged[key] = Setting(combined, setting.origin)
            else:
                merged[key] = setting
    return merged
