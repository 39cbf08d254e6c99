"""From the command line, graceshell.yml, the Procfile and .env to one
process's command and settings.

Layers, weakest first: preset < graceshell.yml top level < `defaults:` <
`processes.<type>:` < .env (environment only) < flags. The preset itself is
chosen by the same order (flags, the process's section, defaults), falling
back to `generic`.
"""

from __future__ import annotations

import os

from graceshell.errors import UsageError
from graceshell.config.presets import preset_layer
from graceshell.config.settings import Origin, Setting, merge

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from graceshell.config.configfile import ConfigFile
    from graceshell.config.procfile import Procfile

    # (argv of the line, "Procfile:3") -> (the worker's own argv, the line's flags as settings)
    RunLineReader = Callable[[list[str], str], tuple[list[str], dict[str, Setting]]]

# The parsers are imported only when there is a file to parse: `graceshell
# run -- CMD` with no graceshell.yml, Procfile or .env pays for none of them.
DEFAULT_CONFIG = "graceshell.yml"
CONFIG_ENV = "GRACESHELL_CONFIG"

DEFAULT_PROCFILE = "Procfile"
DEFAULT_DOTENV = ".env"


class Sources:
    """The files a command reads, loaded once: config, Procfile, .env."""

    __slots__ = ("config", "procfile_path", "_procfile", "dotenv", "inline", "read_run_line")

    def __init__(self, config_path: str | None, procfile_path: str | None, env_files: Sequence[str] | None,
                 environ: Mapping[str, str], read_run_line: RunLineReader | None = None) -> None:
        path = config_path or environ.get(CONFIG_ENV) or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
        self.config: ConfigFile | None = None
        if path:
            from graceshell.config.configfile import load_config

            self.config = load_config(path)
        self.procfile_path = procfile_path or DEFAULT_PROCFILE
        self._procfile: Procfile | None = None
        files = list(env_files) if env_files else ([DEFAULT_DOTENV] if os.path.exists(DEFAULT_DOTENV) else [])
        self.dotenv: dict[str, Setting] = {}
        # Flags written on a Procfile line that itself runs `graceshell run`, per type.
        self.inline: dict[str, dict[str, Setting]] = {}
        # How a `graceshell run ...` Procfile line is read: the command line's
        # own parser, handed down from above so that this layer imports no CLI.
        self.read_run_line = read_run_line
        if files:
            from graceshell.config.procfile import read_dotenv
        for file in files:
            self.dotenv = merge([self.dotenv, {"env": Setting(read_dotenv(file), Origin(file))}])

    @property
    def procfile(self) -> Procfile:
        if self._procfile is None:
            from graceshell.config.procfile import read_procfile

            self._procfile = read_procfile(self.procfile_path)
        return self._procfile

    def has_procfile(self) -> bool:
        return self._procfile is not None or os.path.exists(self.procfile_path)

    def process_command(self, process_type: str) -> list[str]:
        if not self.has_procfile():
            raise UsageError(f"{self.procfile_path}: not found, so {process_type!r} is no process type "
                             f"(to run a command, write: graceshell run -- {process_type})")
        procfile = self.procfile
        if process_type not in procfile.processes:
            raise UsageError(f"{procfile.path}: no process type {process_type!r} "
                             f"(types: {', '.join(procfile.processes)})")
        where = f"{procfile.path}:{procfile.lines[process_type]}"
        from graceshell.config.procfile import command_argv

        argv = command_argv(procfile.processes[process_type], where)
        if _runs_itself(argv, process_type):
            raise UsageError(f"{where}: the command of {process_type!r} is `graceshell run {process_type}` "
                             "itself; write the worker's own command there")
        if len(argv) > 1 and os.path.basename(argv[0]) == "graceshell" and argv[1] == "run":
            if self.read_run_line is None:
                raise UsageError(f"{where}: a `graceshell run` line cannot be read here")
            argv, self.inline[process_type] = self.read_run_line(argv, where)
        return argv

    def settings_for(self, section: str | None, flags: Mapping[str, Setting]) -> dict[str, Setting]:
        """The merged settings of one process (section: its type, or None)."""
        config = self.config
        layers: list[Mapping[str, Setting]] = []
        if config is not None:
            layers += [config.top, config.defaults, config.processes.get(section or "", {})]
        layers += [self.dotenv, self.inline.get(section or "", {}), flags]
        chosen = merge(layers).get("preset")
        return merge([preset_layer(chosen.value if chosen else "generic"), *layers])


def _runs_itself(argv: list[str], process_type: str) -> bool:
    """`worker: graceshell run worker` would start graceshell again and again."""
    from graceshell.config.procfile import command_words

    words = command_words(argv)
    return (bool(words) and os.path.basename(words[0]) == "graceshell" and "run" in words
            and words[-1] == process_type and "--" not in words)


def process_from_environment(environ: Mapping[str, str]) -> str | None:
    """`worker.1` from $GRACESHELL_PROCESS or Heroku's $DYNO, when set."""
    return environ.get("GRACESHELL_PROCESS") or environ.get("DYNO") or None


def process_type_of(name: str) -> str:
    """`worker` for `worker.1`: the Procfile type of a numbered instance."""
    base, _, number = name.rpartition(".")
    return base if base and number.isdigit() else name
