"""The hotpath pytest plugin (hotpath.testing) is loaded through its pytest11 entry point."""

pytest_plugins = ["pytester"]
