"""graceshell.yml: loaded with line numbers, checked against the schema.

Every error names the file, the line and the key path, and says what to do:

    graceshell.yml:7: processes.worker.ladder[1].signal: unknown signal 'SIGNOPE' (did you mean ...)

Only YAML's safe types are built (pyyaml's SafeLoader), duplicate keys are
errors rather than silently last-wins, and values are converted here
(durations to seconds, signals to numbers), so that what reaches the plan is
already typed.
"""

from __future__ import annotations

from graceshell.durations import parse_duration
from graceshell.errors import MAX_SHOWN, UsageError, one_line, read_user_file, shown
from graceshell.config.ladder import LadderError, StepSpec, parse_ladder_spec, resolve_offset
from graceshell.logs import FORMATS, LEVELS
from graceshell.config.platforms import BROADCASTS, PLATFORMS
from graceshell.config.plan import SECOND_SIGNAL_POLICIES
from graceshell.config.settings import Origin, Setting
from graceshell.signals import parse_signal

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


class ConfigError(UsageError):
    """A problem in the config file: exit 2, with file:line: key: message."""


class ConfigFile:
    """A checked graceshell.yml: top-level settings, `defaults:` and each process's section."""

    __slots__ = ("path", "top", "defaults", "processes")

    def __init__(self, path: str, top: dict[str, Setting], defaults: dict[str, Setting],
                 processes: dict[str, dict[str, Setting]]) -> None:
        self.path = path
        self.top = top
        self.defaults = defaults
        self.processes = processes


# -- reading YAML with positions ------------------------------------------------------

# graceshell.yml needs five levels (processes.worker.ladder[0].at); the bounds
# keep a mistaken or hostile file from exhausting the stack, memory or time.
MAX_DEPTH = 32
MAX_NUMBER_TEXT = 30  # characters of an integer: int() refuses 4300 digits with a traceback
MAX_MERGED_KEYS = 10_000  # merge keys (<<) of merge keys grow a mapping exponentially


def _loader_class() -> type:
    """pyyaml's SafeLoader with bounds, and errors that all carry a line."""
    import yaml
    from yaml.constructor import ConstructorError

    class BoundedLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            # pyyaml composes recursively, one Python frame per level or more.
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                                      self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep)
            except yaml.YAMLError:
                raise
            except RecursionError:
                raise ConstructorError(None, None, "nested too deeply", node.start_mark) from None
            except Exception as exc:  # noqa: BLE001 - e.g. `!!bool maybe` (KeyError), `0000-01-01` (ValueError)
                reason = f": {exc}" if isinstance(exc, ValueError) else ""
                raise ConstructorError(None, None, f"cannot read {_tag(node.tag)} {shown(node.value)}{reason}",
                                       node.start_mark) from None

        def construct_yaml_int(self, node: Any) -> int:
            if isinstance(node.value, str) and len(node.value) > MAX_NUMBER_TEXT:
                raise ConstructorError(None, None, f"number {shown(node.value, 40)} is too large",
                                       node.start_mark)
            return super().construct_yaml_int(node)

        def flatten_mapping(self, node: Any) -> None:
            super().flatten_mapping(node)
            if len(node.value) > MAX_MERGED_KEYS:
                raise ConstructorError(None, None, f"more than {MAX_MERGED_KEYS} keys after merging (<<)",
                                       node.start_mark)

    BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)
    return BoundedLoader


def _tag(tag: str) -> str:
    return "!!" + tag.rpartition(":")[2] if tag.startswith("tag:yaml.org,2002:") else tag


def _index_lines(loader: Any, node: Any, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int], file: str,
                 seen_nodes: set[int]) -> None:
    """Record the line of every key and list item; reject duplicate keys.

    A node reached again through an alias (&anchor, *alias) is not walked
    again: aliases of aliases would otherwise make the walk exponential.
    """
    import yaml

    lines.setdefault(path, node.start_mark.line + 1)
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: keys given beside it override the merged ones, as YAML says
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(f"{file}:{key_node.start_mark.line + 1}: {_show_path(path)}: a key must be a "
                                  "plain word, not a list or mapping")
            key = "=" if key_node.tag == "tag:yaml.org,2002:value" else loader.construct_object(key_node)
            if key in seen:
                shown_path = _show_path(path + (key,))
                raise ConfigError(f"{file}:{key_node.start_mark.line + 1}: {shown_path}: duplicate key "
                                  "(YAML would silently keep only the last one)")
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _index_lines(loader, value_node, path + (key,), lines, file, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            _index_lines(loader, item, path + (index,), lines, file, seen_nodes)


def read_yaml(path: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """The document at `path` (safe types only) and the line of each key path."""
    import yaml

    text = read_user_file(path, "config file not found", ConfigError)
    name = one_line(path)
    loader = None
    try:
        loader = _loader_class()(text)  # checks every character first: ReaderError
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        lines: dict[tuple[Any, ...], int] = {}
        _index_lines(loader, node, (), lines, path, set())
        return loader.construct_document(node), lines
    except yaml.reader.ReaderError as exc:
        line = text[:exc.position].count("\n") + 1
        raise ConfigError(f"{name}:{line}: control character {chr(exc.character)!r} is not allowed in YAML; "
                          "remove it (is this a text file?)") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        reason = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{name}{line}: invalid YAML: {reason}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: invalid YAML: {exc}") from None
    except RecursionError:  # a bound above should have caught it first; never a traceback
        raise ConfigError(f"{name}: invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _show_path(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:  # a key as written; a strange one (a newline, a long paste) as its repr
            word = str(part)
            word = word if word.isprintable() and len(word) <= MAX_SHOWN else shown(part, 40)
            text += f".{word}" if text else word
    return text or "(top level)"


# -- the schema ----------------------------------------------------------------------------

class _Checker:
    """Converts and checks values, raising errors that point at the line."""

    def __init__(self, file: str, lines: dict[tuple[Any, ...], int]) -> None:
        self.file = file
        self.lines = lines

    def where(self, path: tuple[Any, ...]) -> str:
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                return f"{self.file}:{self.lines[path[:cut]]}: {_show_path(path)}"
        return f"{self.file}: {_show_path(path)}"

    def fail(self, path: tuple[Any, ...], message: str) -> ConfigError:
        return ConfigError(f"{self.where(path)}: {message}")

    def origin(self, path: tuple[Any, ...], item_count: int = 0) -> Origin:
        items = [self.where(path + (i,)) for i in range(item_count)] if item_count else None
        return Origin(self.where(path), items)

    # Converters: (value, path) -> typed value.

    def duration(self, value: Any, path: tuple[Any, ...]) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.fail(path, f"expected a duration such as 25s or 500ms, got {_kind(value)}")
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None

    def signal(self, value: Any, path: tuple[Any, ...]) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.fail(path, f"expected a signal such as TERM, got {_kind(value)}")
        try:
            return parse_signal(value)
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None

    def string(self, value: Any, path: tuple[Any, ...]) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"expected a non-empty string, got {_kind(value)}")
        if "\0" in value:
            raise self.fail(path, "a NUL character (\\0) cannot be part of a command; remove it")
        return value

    def boolean(self, value: Any, path: tuple[Any, ...]) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {_kind(value)}")
        return value

    def choice(self, choices: tuple[str, ...] | list[str]) -> Callable[[Any, tuple[Any, ...]], str]:
        def check(value: Any, path: tuple[Any, ...]) -> str:
            if not isinstance(value, str) or value not in choices:
                raise self.fail(path, f"{shown(value)} is not one of {', '.join(choices)}")
            return str(value)
        return check

    def platform(self, value: Any, path: tuple[Any, ...]) -> str:
        return self.choice([*PLATFORMS, "auto"])(value, path)

    def preset(self, value: Any, path: tuple[Any, ...]) -> str:
        from graceshell.config.presets import PRESETS

        if not isinstance(value, str) or value not in PRESETS:
            raise self.fail(path, f"unknown preset {shown(value)} (known: {', '.join(PRESETS)})")
        return str(value)

    def mapping(self, value: Any, path: tuple[Any, ...]) -> dict[Any, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping (key: value lines), got {_kind(value)}")
        return value

    def remap(self, value: Any, path: tuple[Any, ...]) -> dict[int, int]:
        return {self.signal(source, path + (source,)): self.signal(target, path + (source,))
                for source, target in self.mapping(value, path).items()}

    def env(self, value: Any, path: tuple[Any, ...]) -> dict[str, str]:
        env = {}
        for name, item in self.mapping(value, path).items():
            if not isinstance(name, str) or not name.replace("_", "a").isalnum() or name[0].isdigit():
                raise self.fail(path + (name,), f"{shown(name)} is not a valid environment variable name")
            if not isinstance(item, (str, int, float)):  # bool is an int: `yes` becomes "true"
                raise self.fail(path + (name,), f"expected a string or number, got {_kind(item)}")
            if isinstance(item, str) and "\0" in item:
                raise self.fail(path + (name,), "a NUL character (\\0) cannot be part of an environment "
                                "variable; remove it")
            env[name] = str(item).lower() if isinstance(item, bool) else str(item)
        return env

    def restart(self, value: Any, path: tuple[Any, ...]) -> str:
        if value is False:  # YAML 1.1 reads a bare `no` as false
            value = "no"
        return self.choice(("no", "on-failure", "always"))(value, path)

    def address(self, value: Any, path: tuple[Any, ...]) -> tuple[str, int]:
        from graceshell.fleet.options import parse_address

        return self._parsed(parse_address, value, path, "HOST:PORT such as 127.0.0.1:9090")

    def url(self, value: Any, path: tuple[Any, ...]) -> str:
        from graceshell.fleet.options import parse_metadata_url

        return self._parsed(parse_metadata_url, value, path, "a URL such as http://169.254.169.254")

    def notices(self, value: Any, path: tuple[Any, ...]) -> str:
        from graceshell.fleet.options import NOTICE_PROVIDERS

        return self.choice(NOTICE_PROVIDERS)(value, path)

    def _parsed(self, parse: Callable[[str], Any], value: Any, path: tuple[Any, ...], expected: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.fail(path, f"expected {expected}, got {_kind(value)}")
        try:
            return parse(str(value))
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None

    def count(self, value: Any, path: tuple[Any, ...]) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(path, f"expected a whole number of 0 or more, got {_kind(value)}")
        return value

    def signal_list(self, value: Any, path: tuple[Any, ...]) -> frozenset[int]:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not value:
            raise self.fail(path, f"expected a list of signals, got {_kind(value)}")
        return frozenset(self.signal(item, path + (index,)) for index, item in enumerate(value))

    def ladder(self, value: Any, path: tuple[Any, ...]) -> list[StepSpec]:
        if isinstance(value, str):
            try:
                specs = parse_ladder_spec(value)
            except LadderError as exc:
                raise self.fail(path, str(exc)) from None
        elif isinstance(value, list):
            specs = [self._step(item, path + (index,)) for index, item in enumerate(value)]
        else:
            raise self.fail(path, f"expected a list of {{at: ..., signal: ...}} steps, got {_kind(value)}")
        for index, spec in enumerate(specs):  # check offsets and signals now, budget later
            step_path = path + (index,) if isinstance(value, list) else path
            try:
                resolve_offset(spec.at, 0.0)
            except ValueError as exc:
                raise self.fail(step_path + (("at",) if isinstance(value, list) else ()), str(exc)) from None
            self.signal(spec.signal, step_path + (("signal",) if isinstance(value, list) else ()))
        return specs

    def _step(self, item: Any, path: tuple[Any, ...]) -> StepSpec:
        if not isinstance(item, dict):
            raise self.fail(path, f"expected {{at: DURATION, signal: SIGNAL}}, got {_kind(item)}")
        unknown = set(item) - {"at", "signal"}
        if unknown:
            key = sorted(map(str, unknown))[0]
            raise self.fail(path + (key,), "unknown key (a step has only at and signal)")
        for key in ("at", "signal"):
            if key not in item:
                raise self.fail(path, f"missing {key!r}")
        at = item["at"]
        if isinstance(at, bool) or not isinstance(at, (int, float, str)):
            raise self.fail(path + ("at",), f"expected a duration such as 20s or budget-5s, got {_kind(at)}")
        return StepSpec(str(at) if isinstance(at, str) else float(at), item["signal"])


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    names = {bool: "true/false", int: "a number", float: "a number", str: "text", list: "a list", dict: "a mapping"}
    quoted = shown(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
    return f"{names.get(type(value), type(value).__name__)} {quoted}".rstrip()


# Keys of a process section (and of `defaults:`), with their converters.
PROCESS_KEYS: dict[str, str] = {
    "preset": "preset", "remap": "remap", "ladder": "ladder", "second_signal": "second_signal",
    "linger": "duration", "budget": "duration", "on_orphans": "string", "stop_signals": "signal_list",
    "env": "env", "restart": "restart", "restart_limit": "count", "parent_death_signal": "signal",
    "clean_exit": "boolean",
    "http": "address", "interruption_notices": "notices", "metadata_url": "url",
}
TOP_KEYS: dict[str, str] = {
    "platform": "platform", "platform_timeout": "duration", "budget": "duration", "broadcast": "broadcast",
    "log_format": "log_format", "log_level": "log_level",
    "http": "address", "interruption_notices": "notices", "metadata_url": "url",
}


def _converter(checker: _Checker, kind: str) -> Callable[[Any, tuple[Any, ...]], Any]:
    special = {"second_signal": checker.choice(SECOND_SIGNAL_POLICIES), "log_format": checker.choice(FORMATS),
               "broadcast": checker.choice(BROADCASTS),
               "log_level": checker.choice(list(LEVELS))}
    return special.get(kind) or getattr(checker, kind)


def _section(checker: _Checker, data: Any, path: tuple[Any, ...], keys: dict[str, str]) -> dict[str, Setting]:
    settings = {}
    for key, value in checker.mapping(data, path).items():
        if key not in keys:
            raise checker.fail(path + (key,), _unknown_key(key, keys))
        converted = _converter(checker, keys[key])(value, path + (key,))
        count = len(converted) if key == "ladder" and isinstance(value, list) else 0
        settings[key] = Setting(converted, checker.origin(path + (key,), count))
    return settings


def _unknown_key(key: Any, keys: Mapping[str, str]) -> str:
    import difflib

    close = difflib.get_close_matches(str(key), list(keys), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(keys)})"
    return f"unknown key{hint}"


def load_config(path: str) -> ConfigFile:
    """Read and check graceshell.yml; ConfigError (exit 2) on the first problem."""
    from graceshell.config.procfile import PROCESS_NAME

    data, lines = read_yaml(path)
    checker = _Checker(path, lines)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise checker.fail((), f"expected a mapping of settings at the top, got {_kind(data)}")
    top_keys = {**TOP_KEYS, "defaults": "", "processes": ""}
    for key in data:
        if key not in top_keys:
            raise checker.fail((key,), _unknown_key(key, top_keys))
    top = _section(checker, {k: v for k, v in data.items() if k in TOP_KEYS}, (), TOP_KEYS)
    defaults = _section(checker, data.get("defaults"), ("defaults",), PROCESS_KEYS)
    processes = {}
    for name, section in checker.mapping(data.get("processes"), ("processes",)).items():
        if not isinstance(name, str) or not PROCESS_NAME.fullmatch(name):
            raise checker.fail(("processes", name), "a process type is letters, digits, _ and - only")
        processes[name] = _section(checker, section, ("processes", name), PROCESS_KEYS)
    return ConfigFile(path, top, defaults, processes)
