"""Error types that the CLI turns into one line on stderr and a fixed exit code."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad input from the user (flags, files, configs): one line on stderr, exit code 2."""


EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_UNHEALTHY = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
