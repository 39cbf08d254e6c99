"""Property-based fuzzing of graceshell as a user meets it: real `graceshell
check` and `graceshell run` processes on mutated copies of
examples/graceshell.yml, examples/Procfile and a .env, and with random
command-line flags and environment variables. Every run ends in success or
in one `graceshell: error:` line and exit 2; never a traceback.

Only the subprocess interface is assumed here (argv, environment, exit
status, stderr), so these tests hold whatever parses the command line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from conftest import clean_env
from fuzz_support import (DURATIONS, EXAMPLE_CONFIG, EXAMPLE_PROCFILE, SIGNALS, YAML_SNIPPETS, assert_clean_outcome,
                          count, examples, graceshell, mutated, nasty_text)

DOTENV = "# the worker's settings\nexport A=1\nB='two words'\nC=\"line\\nbreak\" # comment\n"


def _lay_out(directory: Path, files: dict[str, bytes | None]) -> None:
    for name, data in files.items():
        path = directory / name
        if path.exists():
            path.unlink()
        if data is not None:
            path.write_bytes(data)


@examples(12)
@given(config=mutated(EXAMPLE_CONFIG, YAML_SNIPPETS) | st.just(EXAMPLE_CONFIG.encode()),
       procfile=mutated(EXAMPLE_PROCFILE, ["\0", "graceshell run --budget 1s --", "--preset", "x:", "'"])
       | st.just(EXAMPLE_PROCFILE.encode()),
       dotenv=st.none() | mutated(DOTENV, ["\0", "'", '"', "export "]),
       process_type=st.none() | st.sampled_from(["worker", "celery", "rq", "web", "nosuch"]))
@example(config=EXAMPLE_CONFIG.replace("auto", "auto\0").encode(), procfile=EXAMPLE_PROCFILE.encode(), dotenv=None,
         process_type=None)
@example(config=EXAMPLE_CONFIG.encode(), procfile=b"worker: echo a\0b\n", dotenv=b"A=a\0b\n", process_type="worker")
def test_check_mutated_examples(scratch: Path, config: bytes, procfile: bytes, dotenv: bytes | None,
                                process_type: str | None) -> None:
    count("subprocess: graceshell check, mutated examples")
    _lay_out(scratch, {"graceshell.yml": config, "Procfile": procfile, ".env": dotenv})
    args = ["check"] + ([process_type] if process_type else [])
    assert_clean_outcome(graceshell(args, scratch, clean_env()))


@examples(8)
@given(config=mutated(EXAMPLE_CONFIG, YAML_SNIPPETS) | st.just(EXAMPLE_CONFIG.encode()),
       dotenv=st.none() | mutated(DOTENV, ["\0", "'", '"', "export "]))
@example(config=EXAMPLE_CONFIG.replace('"1"', '"1\\0"').encode(), dotenv=None)
@example(config=EXAMPLE_CONFIG.encode(), dotenv=b"A=a\0b\n")
def test_run_true_mutated_examples(scratch: Path, config: bytes, dotenv: bytes | None) -> None:
    """`graceshell run -- true` as the `worker` process: runs and exits 0, or refuses in one line."""
    count("subprocess: graceshell run -- true, mutated examples")
    _lay_out(scratch, {"graceshell.yml": config, "Procfile": None, ".env": dotenv})
    proc = graceshell(["run", "--", "true"], scratch, clean_env(GRACESHELL_PROCESS="worker.1"))
    assert_clean_outcome(proc)


# Arguments for `true` in a Procfile line: quotes, escapes, expansions, control
# characters; nothing that would make the shell run another command.
SAFE_WORDS = st.text(alphabet=st.sampled_from(list("az09 -=_.,:'\"\\$#@%+/\t\0\x01\x1b\x7f\u0085\u2028é")),
                     max_size=20)


@examples(8)
@given(arguments=SAFE_WORDS, wrapped=st.booleans(), flags=st.lists(
    st.sampled_from(["--budget 1s", "--preset celery", "--preset nope", "--ladder TERM@0s", "--ladder x",
                     "--remap INT:TERM", "--remap x", "--linger 0", "--stop-signals TERM,INT", "--bogus",
                     "--config x.yml", "--name w", "--budget " + "9" * 5000]), max_size=3))
@example(arguments="a\0b", wrapped=False, flags=[])
def test_run_procfile_type(scratch: Path, arguments: str, wrapped: bool, flags: list[str]) -> None:
    """`graceshell run worker`, with `worker: [graceshell run FLAGS --] true ARGUMENTS` in the Procfile."""
    count("subprocess: graceshell run TYPE, fuzzed Procfile line")
    wrapper = f"graceshell run {' '.join(flags)} -- " if wrapped else ""
    line = f"worker: {wrapper}true {arguments}\n".encode("utf-8", "surrogatepass")
    _lay_out(scratch, {"graceshell.yml": None, "Procfile": line, ".env": None})
    proc = graceshell(["run", "worker"], scratch, clean_env())
    if b'"graceshell.exit"' in proc.stderr:
        # The worker ran: its own status (a shell's syntax error is 2) is graceshell's.
        assert b"Traceback" not in proc.stderr and proc.returncode != 70, proc.stderr[-3000:]
    else:
        assert_clean_outcome(proc)


# -- command-line flags and environment variables --------------------------------------------------------

PATHS = ["graceshell.yml", "Procfile", ".env", "/dev/null", "/dev/zero", ".", "nosuch", "", "\udcff", "-",
         "a\nb", "x" * 5000]
FLAG_VALUES = {
    "--config": PATHS, "-c": PATHS, "--procfile": PATHS, "--env": PATHS,
    "--preset": ["celery", "rq", "generic", "nope", ""], "--platform": ["heroku", "fly", "railway", "auto", "x"],
    "--platform-timeout": DURATIONS, "--budget": DURATIONS, "--linger": DURATIONS,
    "--ladder": ["TERM@0s,QUIT@budget-5s", "KILL@0s", "TERM@5s,INT@1s", "x", "@", ",", "QUIT@budget+1s"],
    "--remap": ["INT:TERM", "TERM:KILL", "x:y", ":", "TERM", "TERM:QUIT:INT"],
    "--second-signal": ["escalate", "forward", "ignore", "x"], "--stop-signals": ["TERM,INT", "KILL", ",", "x"],
    "--on-orphans": ["bin/hook", "", "true"], "--name": ["worker", "worker.1", "", "a b", "."],
    "--log-format": ["json", "logfmt", "console", "auto", "yaml"], "--log-level": ["debug", "error", "x"],
    "--json": None, "--help": None, "--version": None, "--bogus": None,
}
# No NUL: no command line or environment can carry one.
flag_value = (st.sampled_from(SIGNALS + DURATIONS) | nasty_text(12)).map(lambda t: t.replace("\0", ""))


@st.composite
def flag_lists(draw: st.DrawFn) -> list[str]:
    """Flags of `run` and `check`, each with its value attached (`--flag=value`), so that no value
    becomes the command; sometimes a flag without its value."""
    words = []
    for flag in draw(st.lists(st.sampled_from(sorted(FLAG_VALUES)), max_size=4)):
        choices = FLAG_VALUES[flag]
        if choices is None:
            words.append(flag)
            continue
        value = draw(st.sampled_from(choices) | flag_value)
        if flag == "-c":
            words.append(f"-c{value}")
        elif draw(st.integers(0, 9)) == 0:
            words.append(flag)  # its value missing
        else:
            words.append(f"{flag}={value}")
    return words


ENVIRONMENT = {
    "GRACESHELL_CONFIG": PATHS, "GRACESHELL_LOG_FORMAT": ["json", "x", ""], "GRACESHELL_LOG_LEVEL": ["debug", "x"],
    "GRACESHELL_PROCESS": ["worker.1", "x", "", ".", "worker.99999999999999999999"],
    "DYNO": ["worker.1", "run.1", "a\nb"], "RAILWAY_REPLICA_ID": ["1"],
    "RAILWAY_DEPLOYMENT_DRAINING_SECONDS": ["inf", "nan", "-1", "1e999", "30", "9" * 5000, "x"],
    "KUBERNETES_SERVICE_HOST": ["10.0.0.1"], "FLY_APP_NAME": ["app"],
}
environments = st.dictionaries(st.sampled_from(sorted(ENVIRONMENT)), st.sampled_from(["x"]), max_size=3).flatmap(
    lambda chosen: st.fixed_dictionaries({name: st.sampled_from(ENVIRONMENT[name]) | flag_value for name in chosen}))


@examples(15)
@given(command=st.sampled_from(["check", "run"]), flags=flag_lists(), environment=environments,
       process_type=st.none() | st.sampled_from(["worker", "nosuch", "-x", "a b"]))
@example(command="run", flags=["--budget=" + "9" * 5000], environment={}, process_type=None)
@example(command="run", flags=[], environment={"RAILWAY_REPLICA_ID": "1", "RAILWAY_DEPLOYMENT_DRAINING_SECONDS": "inf"},
         process_type=None)
@example(command="check", flags=["--config=a\nb"], environment={}, process_type=None)
def test_flags_and_environment(scratch: Path, command: str, flags: list[str], environment: dict[str, str],
                               process_type: str | None) -> None:
    count("subprocess: flags and environment of check and run")
    _lay_out(scratch, {"graceshell.yml": EXAMPLE_CONFIG.encode(), "Procfile": b"worker: true\n",
                       ".env": DOTENV.encode()})
    if command == "run":
        args = ["run", *flags, "--", "true"]
    else:
        args = ["check", *flags] + ([process_type] if process_type else [])
    env = clean_env(**{name: value.replace("\0", "") for name, value in environment.items()})
    argv = [os.fsencode(word) for word in args]  # a surrogate stands for a byte that is not UTF-8
    assert_clean_outcome(graceshell(argv, scratch, env))


# -- the ledger as the worker leaves it, read at graceshell's exit -------------------------------------------------

LEAVE_JUNK = r"""
import json, os, sys
spec = json.load(open(sys.argv[1]))
directory = os.environ["GRACESHELL_JOBS_DIR"]
for name, kind in spec:
    path = os.path.join(directory, os.fsdecode(bytes.fromhex(name)))
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        os.mkdir(path)
    elif kind.startswith("link:"):
        os.symlink(kind[5:], path)
    else:
        with open(path, "wb") as handle:
            handle.write(bytes.fromhex(kind))
"""

junk = st.one_of(
    st.sampled_from(["fifo", "dir", "link:/dev/zero", "link:/dev/urandom", "link:nowhere", "link:/etc/hostname"]),
    st.sampled_from([b"", b"{", b"[1]", b'{"id": "j1", "started_at": NaN}', b'{"event": "x", "self": 1}',
                     b'{"started_at": ' + b"9" * 4000 + b"}", b'{"id": "\\udc80"}', b"[" * 100_000,
                     b'{"id": "' + b"x" * 200_000 + b'"}', b"\xff\xfe", b'{"id": 1e999}']).map(bytes.hex),
    st.binary(max_size=50).map(bytes.hex),
)
junk_names = st.sampled_from([b"a.json", b"b.json", b"\xff.json", b"new\nline.json", b".tmp.json"]).map(bytes.hex)


@examples(5)
@given(files=st.dictionaries(junk_names, junk, min_size=1, max_size=4))
def test_ledger_junk_at_exit(scratch: Path, files: dict[str, str]) -> None:
    """A worker that leaves junk in the ledger: graceshell exits with the worker's 0 and a report
    that is strict JSON."""
    count("subprocess: graceshell run, junk left in the ledger")
    spec = scratch / "spec.json"
    spec.write_text(json.dumps(sorted(files.items())))
    script = scratch / "leave_junk.py"
    script.write_text(LEAVE_JUNK)
    _lay_out(scratch, {"graceshell.yml": None, "Procfile": None, ".env": None})
    proc = graceshell(["run", "--", "python3", str(script), str(spec)], scratch, clean_env(GRACESHELL_LOG_FORMAT="json"))
    assert_clean_outcome(proc, allowed=frozenset({0}))
    exits = [line for line in proc.stderr.decode().splitlines() if '"graceshell.exit"' in line]
    assert len(exits) == 1, proc.stderr[-3000:]

    def strict(constant: str) -> None:
        raise AssertionError(f"{constant} in the exit report")

    report = json.loads(exits[0], parse_constant=strict)
    expected = sum(1 for name in files if not bytes.fromhex(name).startswith(b"."))
    assert len(report["orphaned_jobs"]) == expected, report["orphaned_jobs"]
