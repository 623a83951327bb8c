"""The one exception type the CLI reports as a one-line message instead of a stack trace."""


class Clover2Error(Exception):
    """Bad input or an unusable resource, described for a person: which file, which field, what was expected."""
