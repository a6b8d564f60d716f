"""onnxcomp's passes: one module per pass, each registering itself with ``@register`` (see
``onnxcomp.pipeline``).  ``analysis/`` prove or measure (they never change the network), ``transform/``
rewrite it.  This folder sits at the top of the repository and installs as ``onnxcomp.passes``.

The composite names are declared here: a name standing for a sequence of passes.
"""

from onnxcomp.pipeline import register_composite

register_composite("stable", ["sample", "bounds", "falsify", "milp", "fold"],
                   "exact compression: prove stable neurons over the domain and fold them (LEO++)",
                   paper="ISA (Serra et al. 2021)")
register_composite("lap", ["lookahead", "prune"], "lookahead pruning: LAP scores, then prune to --sparsity or a budget",
                   paper="LAP (Park et al., ICLR 2020)")
register_composite("fisher", ["fisher"], "Fisher-importance compression: fisher scores, then prune (or the transform "
                   "named next, e.g. quantize)", paper="rate-distortion (Gao et al., ICML 2019) §5.3", default_next="prune")
register_composite("lre", ["dependence", "drop"], "linear redundancy elimination: drop linearly dependent hidden "
                   "neurons (exactly dependent ones losslessly; more with --drop or a budget)",
                   paper="LRE-AMC §3.2-3.3")
