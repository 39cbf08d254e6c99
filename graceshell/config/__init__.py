"""The config layer: graceshell.yml, the Procfile and .env, presets and
platforms, merged into settings with their origins and resolved into one
run plan per process. Nothing here starts a process."""
