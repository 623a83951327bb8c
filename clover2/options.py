"""The two ways a command line names options: KEY=VALUE, and [METHOD:]KEY=VALUE for one method's."""

from __future__ import annotations

import yaml

from clover2.errors import Clover2Error


def key_values(pairs: list[str] | None, flag: str = "--option") -> dict:
    """KEY=VALUE pairs as a dict; values parse as YAML scalars (numbers, booleans, strings)."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise Clover2Error(f"{flag} expects KEY=VALUE, got {pair!r}")
        options[key] = yaml.safe_load(value)
    return options


def method_option(pair: str) -> tuple[str | None, str]:
    """[METHOD:]KEY=VALUE as (METHOD or None, KEY=VALUE)."""
    if ":" not in pair.partition("=")[0]:  # a value may hold a colon; a key may not
        return None, pair
    method, _, option = pair.partition(":")
    return method, option
