"""Property-based fuzzing of every parser graceshell has, in process: each
input is accepted, or refused with graceshell's own error and one line that
names the file (and line) or the key; never any other exception.

Example counts: see fuzz_support.py for the profiles ($GRACESHELL_FUZZ).
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fuzz_support import (DURATIONS, EXAMPLE_CONFIG, EXAMPLE_PROCFILE, HUGE_NUMBERS, SIGNALS, YAML_BOMBS,
                          YAML_SNIPPETS, assert_one_line, count, examples, mutated, nasty_text, yaml_text)
from graceshell.commands.check import effective
from graceshell.config.configfile import ConfigError, load_config
from graceshell.durations import MAX_DURATION, format_duration, parse_duration
from graceshell.errors import UsageError, read_user_file
from graceshell.config.ladder import LadderError, build_ladder, parse_ladder_spec, resolve_offset
from graceshell.config.presets import preset_layer
from graceshell.config.procfile import command_argv, parse_dotenv, parse_procfile
from graceshell.config.settings import merge
from graceshell.signals import parse_signal

VALID_SIGNALS = {int(s) for s in signal.valid_signals()}


def _check_config(path: Path) -> None:
    """Load the file; if it loads, every process's plan and `check` view must build or fail cleanly."""
    name = str(path)
    try:
        config = load_config(name)
    except ConfigError as exc:
        assert_one_line(str(exc), name)
        return
    environ = {"DYNO": "worker.1"}
    for section in [None, *config.processes]:
        layers = [config.top, config.defaults, config.processes.get(section or "", {})]
        chosen = merge(layers).get("preset")
        settings = merge([preset_layer(chosen.value if chosen else "generic"), *layers])
        try:
            entry = effective(section or "-", "fuzz", ["true"], settings, environ)
        except UsageError as exc:
            assert_one_line(str(exc))
            continue
        ladder = entry["ladder"]["value"]
        assert ladder[-1]["signal"] == "KILL" and all(math.isfinite(step["at"]) for step in ladder)
        assert math.isfinite(entry["budget_s"]["value"])


# -- graceshell.yml -----------------------------------------------------------------------------

@examples(80)
@given(document=yaml_text())
def test_config_documents(scratch: Path, document: bytes) -> None:
    count("graceshell.yml: schema documents, mutated")
    path = scratch / "graceshell.yml"
    path.write_bytes(document)
    _check_config(path)


@examples(120)
@given(document=mutated(EXAMPLE_CONFIG, YAML_SNIPPETS))
@example(document=EXAMPLE_CONFIG.replace("auto", "auto\0").encode())
@example(document=EXAMPLE_CONFIG.replace("20s", "9" * 5000).replace("0s", "9" * 5000).encode())
@example(document=EXAMPLE_CONFIG.replace("PYTHONUNBUFFERED: \"1\"", "A: " + "[" * 5000).encode())
def test_mutated_example_config(scratch: Path, document: bytes) -> None:
    count("graceshell.yml: mutated examples/graceshell.yml")
    path = scratch / "graceshell.yml"
    path.write_bytes(document)
    _check_config(path)


@examples(100)
@given(document=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_config_noise(scratch: Path, document: bytes) -> None:
    count("graceshell.yml: random bytes and text")
    path = scratch / "graceshell.yml"
    path.write_bytes(document)
    _check_config(path)


@pytest.mark.parametrize("bomb", YAML_BOMBS, ids=range(len(YAML_BOMBS)))
def test_config_bombs(scratch: Path, bomb: str) -> None:
    """Aliases, merge keys and nesting built to exhaust time, memory or the stack."""
    count("graceshell.yml: bombs")
    path = scratch / "bomb.yml"
    path.write_text(bomb)
    _check_config(path)


@pytest.mark.parametrize("source", ["/dev/zero", "/dev/urandom", "directory", "huge", "missing", "bom"])
def test_config_files_that_are_not_configs(scratch: Path, source: str) -> None:
    count("graceshell.yml: devices, directories, huge files")
    if source == "directory":
        path = str(scratch)
    elif source == "huge":
        path = str(scratch / "huge.yml")
        Path(path).write_text("# padding\n" * 200_000)
    elif source == "missing":
        path = str(scratch / "no such file.yml")
    elif source == "bom":
        path = str(scratch / "bom.yml")
        Path(path).write_bytes(b"\xef\xbb\xbfbudget: 5s\n")
    else:
        path = source
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert_one_line(str(exc), path)
    else:
        assert source == "bom" and config.top["budget"].value == 5.0


# -- Procfile and .env ----------------------------------------------------------------------------

def _check_procfile(text: str) -> None:
    try:
        procfile = parse_procfile(text, "Procfile")
    except UsageError as exc:
        assert_one_line(str(exc), "Procfile")
        return
    for name, command in procfile.processes.items():
        where = f"Procfile:{procfile.lines[name]}"
        try:
            argv = command_argv(command, where)
        except UsageError as exc:
            assert_one_line(str(exc), where)
            continue
        # What check accepts, exec can take: no NUL, no empty program.
        assert argv and argv[0] and all("\0" not in word for word in argv), argv


@examples(150)
@given(text=mutated(EXAMPLE_PROCFILE, ["\0", "graceshell run --", "worker:", ": x", "'", '"', "$PORT", "exec "]))
@example(text=b"worker: echo a\0b\n")
@example(text=b"worker: \t \n")
def test_mutated_procfile(text: bytes) -> None:
    count("Procfile: mutated examples/Procfile")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        return  # read_user_file's business, fuzzed below
    _check_procfile(decoded)


@examples(80)
@given(text=st.lists(st.builds(lambda name, sep, command: f"{name}{sep}{command}",
                               st.sampled_from(["worker", "web", "w-1", "bad name", "", "#x", "x!"]) | nasty_text(8),
                               st.sampled_from([":", ": ", ":\t", "", " : "]),
                               nasty_text()), max_size=5).map("\n".join))
def test_procfile_lines(text: str) -> None:
    count("Procfile: generated lines")
    _check_procfile(text)


def _check_dotenv(text: str) -> None:
    try:
        env = parse_dotenv(text, ".env")
    except UsageError as exc:
        assert_one_line(str(exc), ".env")
        return
    for name, value in env.items():
        assert name and "=" not in name and "\0" not in name and "\0" not in value
        os.environ.copy()[name] = value  # what `run` does with it: must not raise


@examples(100)
@given(text=st.lists(st.builds(lambda export, name, sep, value: f"{export}{name}{sep}{value}",
                               st.sampled_from(["", "export ", "export\t", "EXPORT "]),
                               st.sampled_from(["A", "PATH_X", "_", "1B", "a b", "", "É"]) | nasty_text(6),
                               st.sampled_from(["=", " = ", "", "=="]),
                               nasty_text() | st.sampled_from(["'x", '"x', "'a' b", '"a\\"', '"\\', "x #c", "'\0'"])),
                     max_size=5).map("\n".join))
@example(text="A=a\0b")
@example(text='A="a\\0b"')
def test_dotenv(text: str) -> None:
    count(".env: generated lines")
    _check_dotenv(text)


@examples(100)
@given(data=st.binary(max_size=200) | mutated("A=1\nexport B='two'\nC=\"3\\n\" # c\n"))
def test_user_files_as_bytes(scratch: Path, data: bytes) -> None:
    """read_user_file on any bytes: text, or one line naming the file (and the line of a bad byte)."""
    count("Procfile/.env: random bytes through read_user_file")
    path = scratch / "user-file"
    path.write_bytes(data)
    try:
        text = read_user_file(str(path), "not found")
    except UsageError as exc:
        assert_one_line(str(exc), str(path))
        return
    _check_procfile(text)
    _check_dotenv(text)


# -- durations, signals, ladders, remap pairs ----------------------------------------------------

anything = st.one_of(st.text(), nasty_text(), st.sampled_from(DURATIONS + SIGNALS + HUGE_NUMBERS), st.integers(),
                     st.integers(-(10**5000), 10**5000), st.floats(allow_nan=True, allow_infinity=True),
                     st.booleans(), st.none(), st.lists(st.integers(), max_size=2))


@examples(300)
@given(value=anything)
@example(value=10**5000)
@example(value="9" * 5000)
def test_durations(value: object) -> None:
    count("durations")
    try:
        seconds = parse_duration(value)  # type: ignore[arg-type]
    except ValueError as exc:
        assert_one_line(str(exc))
        return
    assert isinstance(seconds, float) and 0 <= seconds <= MAX_DURATION
    format_duration(seconds)


@examples(300)
@given(value=anything)
@example(value="RTMIN+" + "9" * 5000)
def test_signals(value: object) -> None:
    count("signal names")
    try:
        number = parse_signal(value)  # type: ignore[arg-type]
    except ValueError as exc:
        assert_one_line(str(exc))
        return
    assert number in VALID_SIGNALS


ladder_specs = st.lists(st.builds(lambda sig, sep, at: f"{sig}{sep}{at}", st.sampled_from(SIGNALS) | nasty_text(6),
                                  st.sampled_from(["@", "@@", "", " @ "]), st.sampled_from(DURATIONS) | nasty_text(6)),
                        max_size=5).map(",".join) | nasty_text()


@examples(150)
@given(spec=ladder_specs, budget=st.sampled_from([0.0, 0.001, 5.0, 25.0, MAX_DURATION]))
def test_ladder_specs(spec: str, budget: float) -> None:
    count("ladder specs")
    try:
        specs = parse_ladder_spec(spec)
        for step in specs:
            resolve_offset(step.at, 0.0)
            parse_signal(step.signal)
        ladder = build_ladder(specs, budget)
    except (LadderError, ValueError) as exc:
        assert_one_line(str(exc))
        return
    assert ladder[-1].signal == signal.SIGKILL and all(0 <= step.at <= budget for step in ladder)


@examples(120)
@given(pair=st.builds(lambda a, sep, b: f"{a}{sep}{b}", st.sampled_from(SIGNALS) | nasty_text(6),
                      st.sampled_from([":", "::", "", " : "]), st.sampled_from(SIGNALS) | nasty_text(6)))
def test_remap_pairs(pair: str) -> None:
    """FROM:TO as the command line reads it: both halves through parse_signal."""
    count("--remap pairs")
    source, sep, target = pair.partition(":")
    if not sep:
        return  # the command line's own "not FROM:TO" error
    try:
        result = parse_signal(source), parse_signal(target)
    except ValueError as exc:
        assert_one_line(str(exc))
        return
    assert set(result) <= VALID_SIGNALS
