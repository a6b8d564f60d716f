"""``python -m onnxcomp`` is the same as the ``onnxcomp`` command."""

from .cli import entry

entry()
