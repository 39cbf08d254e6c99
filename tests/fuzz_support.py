"""What the fuzz tests share: hypothesis profiles, example counting, the
"one line, exit 2, never a traceback" assertions, and strategies that make
hostile input (control characters, huge numbers, deep nesting, aliases,
merge keys, every tag, duplicate keys, broken encodings) and mutate the
real examples.

Profiles, chosen by $GRACESHELL_FUZZ:
  ci (default)  derandomized, so CI is stable; the whole fuzz suite in well under 30 s
  long          random, every test with 40 times the examples (run it before a release)
  N (a number)  random, N times the examples
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from conftest import GRACESHELL

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = (ROOT / "examples" / "graceshell.yml").read_text()
EXAMPLE_PROCFILE = (ROOT / "examples" / "Procfile").read_text()

_CHOICE = os.environ.get("GRACESHELL_FUZZ", "ci").strip().lower() or "ci"
PROFILE = "long" if _CHOICE == "long" else ("ci" if _CHOICE == "ci" else f"x{_CHOICE}")
SCALE = 1 if PROFILE == "ci" else 40 if PROFILE == "long" else max(int(_CHOICE) if _CHOICE.isdigit() else 1, 1)

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])
settings.register_profile(PROFILE, derandomize=PROFILE == "ci", **_COMMON)
settings.load_profile(PROFILE)

# Examples run, per test: printed at the end of the session (conftest.py).
COUNTS: Counter[str] = Counter()


def examples(base: int) -> settings:
    """Settings for a property with `base` examples in the ci profile, scaled in the others."""
    return settings(max_examples=base * SCALE)


def count(test: str) -> None:
    COUNTS[test] += 1


def report(terminal: Any) -> None:
    if not COUNTS:
        return
    terminal.write_sep("-", f"fuzz: {sum(COUNTS.values())} examples, profile {PROFILE}")
    for test, runs in sorted(COUNTS.items()):
        terminal.write_line(f"{runs:8d}  {test}")


# -- what every outcome must look like --------------------------------------------------

MAX_LINE = 1000


def assert_one_line(message: str, file: str | None = None, limit: int | None = MAX_LINE) -> None:
    """A user error: one printable line; when a file is at fault, it starts with the file's name."""
    assert message, "empty error message"
    assert "\n" not in message and "\r" not in message, f"error message on more than one line: {message!r}"
    assert message.isprintable(), f"unprintable error message: {message!r}"
    assert limit is None or len(message) <= limit, f"error message of {len(message)} characters"
    if file is not None:
        assert re.match(re.escape(file) + r"(:\d+)?: \S", message), f"error does not name {file}: {message!r}"


SUBPROCESS_TIMEOUT = 60.0


def graceshell(args: list[str | bytes], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*GRACESHELL, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=SUBPROCESS_TIMEOUT)


def assert_clean_outcome(proc: subprocess.CompletedProcess[bytes], allowed: frozenset[int] = frozenset({0, 2})
                         ) -> None:
    """Success, or one `graceshell: error:` line and exit 2; never a traceback."""
    stderr = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr, f"traceback (exit {proc.returncode}):\n{stderr[-3000:]}"
    assert proc.returncode in allowed, f"exit {proc.returncode}:\n{stderr[-3000:]}"
    if proc.returncode == 2:
        lines = stderr.splitlines()
        assert len(lines) == 1 and stderr.endswith("\n"), f"not one line:\n{stderr[-3000:]}"
        assert lines[0].startswith("graceshell: error: "), lines[0]
        # Not bounded in length here: the command line's parser quotes a flag's value whole.
        assert_one_line(lines[0].removeprefix("graceshell: error: "), limit=None)


# -- hostile pieces -------------------------------------------------------------------------

CONTROL = [chr(c) for c in (*range(0, 9), *range(11, 32), 0x7F, 0x85, 0x9B)]
ODD_CHARACTERS = CONTROL + ["\t", "\r", "\ufeff", "\u2028", "\u2029", "\u00a0", "\u200b", "\uffff", "\U0001F600",
                            "é", "²", "٣", "'", '"', "\\", "#", ":", "-", "&", "*", "!", "|", ">", "%", "@", "`",
                            "{", "}", "[", "]", ",", "?", "$", ";", "(", ")", "=", " ", "\n"]

HUGE_NUMBERS = ["9" * 5000, "-" + "9" * 5000, "0x" + "f" * 5000, "0o" + "7" * 5000, "0b" + "1" * 5000,
                "1" + "0" * 40, "1e400", "-1e400", "1" + "_0" * 3000, "1:" + "59:" * 2000 + "1", "9" * 4300,
                "9" * 300 + ".5", "." + "9" * 5000, ".inf", "-.inf", ".nan", ".NaN", "1e-400", "0x_1", "+0"]

YAML_SNIPPETS = [
    "[" * 5000 + "]" * 5000, "{a: " * 2000 + "1" + "}" * 2000, "- " * 400 + "x", "[" * 60 + "]" * 60,
    "&a [*a]", "&a {b: *a}", "*nosuch", "&a 1", "&a", "*a",
    "<<: *a", "<<: [*a, *a]", "<<: 5", "<<: [1]", "=: x", "!!merge x", "!!value x",
    "!!python/object/apply:os.system ['true']", "!!python/name:os.system", "!!binary AAAA", "!!binary @@@",
    "!!timestamp 2001-13-40", "0000-01-01", "2001-02-30", "2001-12-14t21:59:43.10-05:00", "!!bool maybe",
    "!!int x", "!!float y", "!!int 0x", "!!null z", "!!set {a, b}", "!!omap [a: 1, b: 2]", "!!omap [1]",
    "!!pairs [a: 1]", "!!str [1]", "!!seq x", "!!map x", "!foo bar", "!<tag:x> y", "! x", "!!", "? [a]\n: b",
    "? {a: 1}\n: b", "%YAML 1.1\n---\n", "%YAML 9.9\n---\n", "%TAG ! tag:x:\n---\n", "---\n...\n---\n", "...",
    "'unterminated", '"\\x00"', '"\\0"', '"\\uD800"', '"\\U0010FFFF"', '"\\e\\a\\b"', '"\\N\\_\\L\\P"', "|\n  x",
    ">-\n  y", "|9\n x", "~", "null", "yes", "no", "on", "off", "y", "n", "True", "1_000", "0b101", "0o17",
    "1:30", "190:20:30", "-0", "0.", ".5", "1e3", "1.5e+3", "[1, [2, [3]]]", "{a: {b: {c: {}}}}", "{}", "[]", "''",
    "- a\n- b", "a: b: c", "\t- x", "   \t", "#", "x #y", "a: |\n b\nc", "? x", ":", "- - -",
]

SIGNALS = ["TERM", "SIGTERM", "sigterm", "15", "0015", "QUIT", "INT", "KILL", "STOP", "HUP", "USR1", "CHLD",
           "SEGV", "RTMIN+2", "RTMAX-1", "RTMIN+99", "RTMIN+" + "9" * 5000, "0", "-1", "65", "999999", "SIGQUTI",
           "IOT", "CLD", "", " ", "T ERM", "term\0", "²", "٣", "9" * 5000]
DURATIONS = ["25s", "25", "1.5s", "500ms", "2m", "1m30s", "0", "0s", "0ms", "168h", "169h", "1e5", "-1s", "25 s",
             "1m30", "s", "ms", "", ".5s", "5.s", "1h1h1h", "9" * 400 + "s", "9" * 5000, "budget", "budget-5s",
             "budget+5s", "budget-", "BUDGET-1m", "budget-budget", "inf", "nan", "١٢s", "25S", "25sec"]


@st.composite
def nasty_text(draw: st.DrawFn, max_size: int = 30) -> str:
    """Text biased toward what breaks parsers: odd characters, huge numbers, snippets."""
    parts = draw(st.lists(st.one_of(
        st.text(max_size=max_size),
        st.sampled_from(ODD_CHARACTERS),
        st.sampled_from(HUGE_NUMBERS),
        st.sampled_from(SIGNALS + DURATIONS),
        st.text(alphabet=st.sampled_from(ODD_CHARACTERS + list("azAZ09_.,@+")), max_size=max_size),
    ), max_size=4))
    return "".join(parts)


@st.composite
def mutated(draw: st.DrawFn, original: str, snippets: list[str] | None = None, max_mutations: int = 4) -> bytes:
    """`original` with a few edits: characters or snippets inserted, spans deleted or
    replaced, lines duplicated, swapped or re-indented; sometimes bytes that are not UTF-8."""
    text = original
    for _ in range(draw(st.integers(1, max_mutations))):
        lines = text.split("\n")
        at = draw(st.integers(0, max(len(text), 0)))
        line = draw(st.integers(0, max(len(lines) - 1, 0)))
        kind = draw(st.sampled_from(["insert", "insert", "snippet", "snippet", "delete", "replace_value",
                                     "duplicate_line", "swap_lines", "indent", "replace_line", "truncate"]))
        if kind == "insert":
            text = text[:at] + draw(st.one_of(st.sampled_from(ODD_CHARACTERS), nasty_text(10))) + text[at:]
        elif kind == "snippet":
            pieces = (snippets or []) + HUGE_NUMBERS + ODD_CHARACTERS
            text = text[:at] + draw(st.sampled_from(pieces)) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        elif kind == "replace_value" and ":" in lines[line]:
            key = lines[line].split(":", 1)[0]
            value = draw(st.one_of(st.sampled_from((snippets or []) + HUGE_NUMBERS + SIGNALS + DURATIONS),
                                   nasty_text()))
            lines[line] = f"{key}: {value}"
            text = "\n".join(lines)
        elif kind == "duplicate_line":
            lines.insert(line, lines[line])
            text = "\n".join(lines)
        elif kind == "swap_lines" and len(lines) > 1:
            other = draw(st.integers(0, len(lines) - 1))
            lines[line], lines[other] = lines[other], lines[line]
            text = "\n".join(lines)
        elif kind == "indent":
            lines[line] = draw(st.sampled_from(["", " ", "  ", "    ", "\t", "      "])) + lines[line].lstrip()
            text = "\n".join(lines)
        elif kind == "replace_line":
            lines[line] = draw(nasty_text())
            text = "\n".join(lines)
        elif kind == "truncate":
            text = text[:at]
    data = text.encode("utf-8", "surrogatepass")
    tail = draw(st.sampled_from([b"", b"", b"", b"\xff", b"\xc3", b"\xef\xbb\xbf", b"\x00", b"\xed\xa0\x80"]))
    where = draw(st.integers(0, len(data)))
    return data[:where] + tail + data[where:]


# -- configuration documents built from the schema ---------------------------------------------

TOP_KEYS = ["platform", "platform_timeout", "budget", "log_format", "log_level", "defaults", "processes"]
PROCESS_KEYS = ["preset", "remap", "ladder", "second_signal", "linger", "budget", "on_orphans", "stop_signals",
                "env", "restart", "restart_limit"]
WORDS = ["auto", "heroku", "fly", "railway", "none", "json", "console", "debug", "info", "celery", "rq", "generic",
         "sidekiq", "escalate", "forward", "ignore", "no", "on-failure", "always", "worker", "web", "bin/hook"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), nasty_text(),
    st.sampled_from(SIGNALS + DURATIONS + WORDS), st.binary(max_size=8), st.dates(), st.datetimes(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(TOP_KEYS + PROCESS_KEYS + ["at", "signal"]),
                                                      st.text(max_size=8), st.integers()), inner, max_size=4)),
    max_leaves=12,
)


def _plausible(key: str) -> st.SearchStrategy[Any]:
    signal = st.sampled_from(SIGNALS) | st.integers(-5, 70)
    duration = st.sampled_from(DURATIONS) | st.integers(-5, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    step = st.fixed_dictionaries({"at": duration, "signal": signal})
    return {
        "platform": st.sampled_from(WORDS), "log_format": st.sampled_from(WORDS), "log_level": st.sampled_from(WORDS),
        "preset": st.sampled_from(WORDS), "second_signal": st.sampled_from(WORDS), "restart": st.sampled_from(WORDS),
        "platform_timeout": duration, "budget": duration, "linger": duration,
        "remap": st.dictionaries(signal, signal, max_size=3),
        "ladder": st.lists(step, max_size=4) | st.lists(st.builds(lambda s, a: f"{s}@{a}", signal, duration),
                                                        max_size=4).map(",".join),
        "stop_signals": st.lists(signal, max_size=4) | st.lists(signal, max_size=4).map(
            lambda items: ",".join(map(str, items))),
        "env": st.dictionaries(st.text(max_size=8) | st.sampled_from(["A", "PATH_X", "1B", "a b", "É"]),
                               scalars, max_size=3),
        "on_orphans": st.sampled_from(["bin/hook", "", " ", "a\0b", "true"]) | st.text(max_size=10),
        "restart_limit": st.integers(-3, 10**30),
    }.get(key, values)


@st.composite
def config_documents(draw: st.DrawFn) -> Any:
    """A graceshell.yml document as data: known keys with plausible or arbitrary values, sometimes
    not a mapping at all."""
    def section(keys: list[str]) -> dict[Any, Any]:
        chosen = draw(st.lists(st.sampled_from(keys), max_size=5, unique=True))
        doc = {key: draw(_plausible(key) if draw(st.booleans()) else values) for key in chosen}
        if draw(st.integers(0, 9)) == 0:
            doc[draw(st.text(max_size=8))] = draw(scalars)
        return doc

    if draw(st.integers(0, 19)) == 0:
        return draw(values)
    doc = section(TOP_KEYS[:5])
    if draw(st.booleans()):
        doc["defaults"] = section(PROCESS_KEYS)
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(["worker", "web", "rq", "bad name", "x.1", ""]) | st.integers(),
                              max_size=3, unique=True))
        doc["processes"] = {name: section(PROCESS_KEYS) for name in names}
    return doc


@st.composite
def yaml_text(draw: st.DrawFn) -> bytes:
    """A config document dumped in some YAML style, then perhaps mutated as text."""
    import yaml

    doc = draw(config_documents())
    try:
        text = yaml.safe_dump(doc, default_flow_style=draw(st.sampled_from([None, True, False])),
                              allow_unicode=draw(st.booleans()), sort_keys=False,
                              indent=draw(st.sampled_from([2, 4])),
                              default_style=draw(st.sampled_from([None, None, "'", '"'])))
    except (yaml.YAMLError, ValueError, OverflowError):
        text = "budget: 1\n"
    if draw(st.booleans()):
        return draw(mutated(text, YAML_SNIPPETS, max_mutations=2))
    return text.encode("utf-8", "surrogatepass")


YAML_BOMBS = [
    # Aliases of aliases: exponential if anything walks the tree without care.
    "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(20)),
    # Merge keys of merge keys: each level doubles the mapping pyyaml builds.
    "a0: &a0 {k0: 1, k1: 2}\n" + "".join(f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}\n" for i in range(1, 40)),
    # Anchors nested through aliases deeper than any single level.
    "a0: &a0 [[[[[[[[[[1]]]]]]]]]]\n" + "".join(f"a{i}: &a{i} [[[[[[[[[[*a{i - 1}]]]]]]]]]]\n" for i in range(1, 200)),
    # Merges chained a thousand deep (pyyaml flattens them recursively).
    "a0: &a0 {k: 1}\n" + "".join(f"a{i}: &a{i} {{<<: *a{i - 1}}}\n" for i in range(1, 1200)),
    "budget: &a [*a]\n", "defaults: &d\n  env: *d\n", "processes: &p {worker: *p}\n",
    "defaults:\n  ladder: &l [*l]\n", "defaults:\n  remap: &r {TERM: *r}\n",
    "- " * 20000 + "x\n", "budget: " + "[" * 100000 + "\n", "a: " + "{" * 100000 + "\n",
    "budget: " + "'" + "x" * 200000 + "'\n", "? " + "x" * 100000 + "\n: 1\n",
    "platform: heroku\n" * 3, "budget: 1\n" + " " * 100000 + "\n", "\n" * 100000 + "budget: [\n",
]
