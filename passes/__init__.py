"""All onnxcomp passes.  Importing this package registers them (see ``onnxcomp.pipeline``)."""

from onnxcomp.pipeline import register_composite

from .analysis import sample  # noqa: F401  (registers itself)
