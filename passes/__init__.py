"""All onnxcomp passes.  Importing this package registers them (see ``onnxcomp.pipeline``)."""

from onnxcomp.pipeline import register_composite

from .analysis import sample  # noqa: F401  (registers itself)
from .analysis import bounds  # noqa: F401
from .analysis import falsify, stability  # noqa: F401
from .analysis import fisher, lookahead  # noqa: F401
from .analysis import dependence  # noqa: F401
from .transform import prune, quantize  # noqa: F401
from .transform import drop_neurons  # noqa: F401

register_composite("lap", ["lookahead", "prune"], "lookahead pruning: LAP scores, then prune to --sparsity or a budget",
                   paper="LAP (Park et al., ICLR 2020)")
register_composite("fisher", ["fisher"], "Fisher-importance compression: fisher scores, then prune (or the transform "
                   "named next, e.g. quantize)", paper="rate-distortion (Gao et al., ICML 2019) §5.3", default_next="prune")
register_composite("lre", ["dependence", "drop"], "linear redundancy elimination: drop linearly dependent hidden "
                   "neurons (exactly dependent ones losslessly; more with --drop or a budget)",
                   paper="LRE-AMC §3.2-3.3")
from .transform import fold_stable  # noqa: F401

register_composite("stable", ["sample", "bounds", "falsify", "milp", "fold"],
                   "exact compression: prove stable neurons over the domain and fold them (LEO++)",
                   paper="ISA (Serra et al. 2021)")
