"""graceshell: a graceful-shutdown process supervisor for background-job workers.

Importing this package is cheap and has no side effects; the engine, the CLI
and the integrations live in their own modules and are imported on demand.
"""

__version__ = "0.1.0"
