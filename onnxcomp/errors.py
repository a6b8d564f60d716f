"""Typed errors.  Library code raises these; only ``cli.py`` turns them into messages and exit codes.

Exit codes: 1 verification or budget failed; 2 bad input or usage (the user can fix it); 3 an internal
error (a pass broke its declared contract, or a bug): the user cannot fix it and should report it.
"""

from __future__ import annotations


class OnnxcompError(Exception):
    """Base class: a problem the user can act on.  ``exit_code`` is what the CLI returns."""

    exit_code = 2


class InputError(OnnxcompError):
    """Bad input: a file, node, flag or value we refuse.  Exit code 2."""

    exit_code = 2


class UsageError(InputError):
    """A flag combination that makes no sense.  Exit code 2."""


class OptionError(UsageError):
    """An option value or name refused (unknown, wrong type, out of range).  Exit code 2.

    ``key`` is the option's long name (``time_limit``), ``shown`` the value as given (or ``None``) and
    ``message`` what is wrong, without naming the option: each face names it its own way
    (``--time-limit`` on the command line, ``time_limit`` and the file in a config file, ``time_limit=``
    in Python) through :meth:`relabel`.
    """

    def __init__(self, key: str, message: str, shown: str | None = None, label: str | None = None):
        self.key, self.message, self.shown = key, message, shown
        self.label = label or key
        head = self.label if shown is None else f"{self.label} {shown}"
        super().__init__(f"{head}: {message}")

    def relabel(self, label: str) -> "OptionError":
        return OptionError(self.key, self.message, self.shown, label)


class PassError(OnnxcompError):
    """A pass could not run on this model (said with the pass name).  Exit code 2."""

    exit_code = 2


class VerificationFailed(OnnxcompError):
    """The emitted model does not match the original within tolerance.  Exit code 1."""

    exit_code = 1


class BudgetNotMet(OnnxcompError):
    """No setting of a lossy pass meets the user's fidelity budget.  Exit code 1."""

    exit_code = 1


class OutputGrew(OnnxcompError):
    """The written model would be larger than its input and ``--fail-on-growth`` was given.  Exit code 1."""

    exit_code = 1


class InternalError(OnnxcompError):
    """A bug in onnxcomp or in a pass (not the user's input).  Exit code 3."""

    exit_code = 3


class ContractError(InternalError):
    """A pass broke its declared contract (pass manager check).  Exit code 3."""


class PreconditionError(ContractError):
    """A pass was run without an annotation it declares it requires."""


class PostconditionError(ContractError):
    """A pass's result contradicts its declaration: an analysis changed the network, a transform changed
    the input or output size, a declared annotation is missing or an undeclared one was returned."""
