"""Typed errors.  Library code raises these; only ``cli.py`` turns them into messages and exit codes."""

from __future__ import annotations


class OnnxcompError(Exception):
    """Base class: a problem the user can act on.  ``exit_code`` is what the CLI returns."""

    exit_code = 2


class InputError(OnnxcompError):
    """Bad input: a file, node, flag or value we refuse.  Exit code 2."""

    exit_code = 2


class UsageError(InputError):
    """A flag combination that makes no sense.  Exit code 2."""


class PassError(OnnxcompError):
    """A pass could not run on this model (said with the pass name).  Exit code 2."""

    exit_code = 2


class VerificationFailed(OnnxcompError):
    """The emitted model does not match the original within tolerance.  Exit code 1."""

    exit_code = 1


class BudgetNotMet(OnnxcompError):
    """No setting of a lossy pass meets the user's fidelity budget.  Exit code 1."""

    exit_code = 1
