"""The commands beside `run`: `check`, `drill` and `start`, each built on the
config layer and the engine; the click command line in cli.py calls them."""
