"""The pass manager: composite expansion, provider insertion, needs checked in one place, the contracts of
each kind (analyses leave the network untouched, transforms keep the input and output sizes), typed
options (defaults, ranges, choices, unknown names), and the registry's discoverability."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from onnxcomp import pipeline
from onnxcomp.dependence import Dependence
from onnxcomp.errors import InternalError, OptionError, PostconditionError, PreconditionError, UsageError
from onnxcomp.ir import Box, Dense, Network
from onnxcomp.pipeline import (ANALYSIS, DOMAIN, EXACT, REGISTRY, Context, PassManager, PassResult, expand, plan,
                               register)
from onnxcomp.sampling import ActivationStats
from onnxcomp.scores import FisherScores, LookaheadScores
from onnxcomp.stability import DomainBounds, Stability

from builders import random_network


def small_net(seed: int = 0) -> Network:
    return random_network(np.random.default_rng(seed), 3, [5, 4], 2)


def box(n: int = 3) -> Box:
    return Box(-np.ones(n), np.ones(n), source="-1:1")


@pytest.fixture
def scratch():
    """Register throw-away passes for one test, and remove them afterwards."""
    before = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(before)


# ---- expansion and providers --------------------------------------------------------------------------
def test_composites_expand_in_order_without_repeats():
    assert expand("stable") == ["sample", "bounds", "falsify", "milp", "fold"]
    assert expand("stable,lap") == ["sample", "bounds", "falsify", "milp", "fold", "lookahead", "prune"]
    assert expand("bounds,stable") == ["bounds", "sample", "falsify", "milp", "fold"]
    assert expand(["lre"]) == ["dependence", "drop"]


def test_fisher_alone_means_fisher_then_prune_unless_a_transform_follows():
    assert expand("fisher") == ["fisher", "prune"]
    assert expand("fisher,quantize") == ["fisher", "quantize"]
    assert expand("fisher,lookahead") == ["fisher", "prune", "lookahead"]


def test_unknown_pass_lists_the_available_ones():
    with pytest.raises(UsageError, match=r"unknown pass 'shrink'; available: .*bounds.*stable"):
        expand("stable,shrink")


def test_a_required_annotation_inserts_its_source_before_the_consumer():
    assert plan(["fold"], Context(box=box())) == ["bounds", "fold"]
    assert plan(["milp"], Context(box=box())) == ["bounds", "milp"]
    assert plan(["falsify", "fold"], Context(box=box())) == ["bounds", "falsify", "fold"]


def test_no_provider_is_inserted_when_an_earlier_pass_or_the_context_provides_it():
    assert plan(["sample", "bounds", "falsify", "milp", "fold"], Context(box=box())) == \
        ["sample", "bounds", "falsify", "milp", "fold"]
    net = small_net()
    given = Context(box=box(), annotations={Stability: Stability(net.fingerprint()), DomainBounds: None})
    assert plan(["milp", "fold"], given) == ["milp", "fold"]


def test_requirements_that_depend_on_options_insert_the_analysis_they_name():
    assert plan(["prune"], Context(options={"score": "lap"})) == ["lookahead", "prune"]
    assert plan(["prune"], Context(options={"score": "fisher"})) == ["fisher", "prune"]
    assert plan(["prune"], Context(options={"score": "magnitude"})) == ["prune"]
    assert plan(["drop"], Context(options={"score": "dependence"})) == ["dependence", "drop"]
    assert plan(["quantize"], Context()) == ["quantize"]


def test_every_declared_requirement_has_a_source():
    pipeline.load_passes()
    for spec in REGISTRY.values():
        for need in spec.required(spec.defaults()) + spec.uses:
            pipeline.source_of(need)  # raises InternalError when nothing provides it


def test_sources_are_origins_not_refinements():
    assert pipeline.source_of(Stability).name == "bounds"
    assert pipeline.source_of(DomainBounds).name == "bounds"
    assert pipeline.source_of(ActivationStats).name == "sample"
    assert pipeline.source_of(LookaheadScores).name == "lookahead"
    assert pipeline.source_of(FisherScores).name == "fisher"
    assert pipeline.source_of(Dependence).name == "dependence"


def test_fold_alone_runs_bounds_and_folds_what_they_prove():
    # y0 = x0 - 2 is never positive on [-1, 1]^2; y1 = x1 is unstable
    net = Network((Dense(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([-2.0, 0.0])),
                   Dense(np.array([[1.0, 1.0]]), np.zeros(1), "linear")), 2)
    ctx = Context(box=Box(-np.ones(2), np.ones(2)))
    new = PassManager().run(net, ["fold"], ctx)
    assert [e["name"] for e in ctx.log] == ["bounds", "fold"]
    assert new.widths == [1]
    assert ctx.sections["stable"]["layers"][0]["inactive"] == [0]


# ---- needs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("names,ctx_kwargs,message", [
    (["bounds"], {}, "pass 'bounds' proves facts over an input domain: give --domain"),
    (["stable"], {"data": np.zeros((4, 3))}, "pass 'bounds' proves facts over an input domain: give --domain"),
    (["fisher"], {"box": box()}, "pass 'fisher' needs calibration samples: give --data"),
    (["sample"], {}, "pass 'sample' runs the model on inputs: give --domain or --data"),
    (["dependence"], {}, "pass 'dependence' runs the model on inputs: give --domain or --data"),
])
def test_a_missing_input_is_one_message_naming_the_pass_and_the_flag(names, ctx_kwargs, message):
    ctx = Context(**ctx_kwargs)
    with pytest.raises(UsageError) as exc:
        PassManager().run(small_net(), names, ctx)
    assert str(exc.value) == message
    assert ctx.log == []  # checked before any pass ran


def test_every_need_is_checked_before_the_first_pass_runs(scratch):
    ran = []

    @register("noting", kind=ANALYSIS, summary="records that it ran")
    def noting(net, ctx, opts):
        ran.append(True)
        return PassResult()

    with pytest.raises(UsageError, match="pass 'bounds'"):
        PassManager().run(small_net(), ["noting", "bounds"], Context())
    assert ran == []


# ---- contracts ------------------------------------------------------------------------------------------------
def test_ir_arrays_are_read_only_so_an_analysis_cannot_change_weights(scratch):
    @register("scribble", kind=ANALYSIS, summary="writes into a weight")
    def scribble(net, ctx, opts):
        net.layers[0].weight[0, 0] = 42.0
        return PassResult()

    net = small_net()
    w = net.layers[0].weight[0, 0]
    with pytest.raises(InternalError, match="internal error in pass 'scribble': ValueError.*read-only"):
        PassManager().run(net, ["scribble"], Context())
    assert net.layers[0].weight[0, 0] == w


def test_ir_copies_a_writeable_array_so_the_callers_copy_cannot_change_it():
    w = np.ones((2, 3))
    layer = Dense(w, np.zeros(2))
    w[0, 0] = 5.0
    assert layer.weight[0, 0] == 1.0 and not layer.weight.flags.writeable
    assert not Box(np.zeros(2), np.ones(2)).lo.flags.writeable


def test_an_analysis_that_returns_another_network_breaks_its_contract(scratch):
    @register("sneaky", kind=ANALYSIS, summary="returns a network")
    def sneaky(net, ctx, opts):
        return PassResult(network=net)

    with pytest.raises(PostconditionError, match="analysis pass 'sneaky' returned a network"):
        PassManager().run(small_net(), ["sneaky"], Context())


def test_a_transform_that_mutates_its_input_is_caught_by_the_fingerprint(scratch):
    @register("mutator", kind=EXACT, summary="changes its input through a back door")
    def mutator(net, ctx, opts):
        w = net.layers[0].weight
        w.flags.writeable = True  # defeats the read-only guard on purpose
        w[0, 0] += 1.0
        return PassResult(network=net)

    with pytest.raises(PostconditionError, match="changed the network it was given"):
        PassManager().run(small_net(), ["mutator"], Context())


def test_a_transform_must_keep_the_input_and_output_sizes(scratch):
    @register("chop", kind=EXACT, summary="drops the last output")
    def chop(net, ctx, opts):
        last = net.layers[-1]
        return PassResult(network=net.with_layers(list(net.layers[:-1]) + [replace(
            last, weight=last.weight[:1], bias=last.bias[:1], neuron_ids=last.neuron_ids[:1])]))

    with pytest.raises(PostconditionError, match=r"changed the network's input or output size \(3->2 became 3->1\)"):
        PassManager().run(small_net(), ["chop"], Context())


def test_a_transform_must_return_a_network(scratch):
    @register("forgetful", kind=EXACT, summary="returns nothing")
    def forgetful(net, ctx, opts):
        return PassResult()

    with pytest.raises(PostconditionError, match="did not return a Network"):
        PassManager().run(small_net(), ["forgetful"], Context())


def test_an_analysis_returns_exactly_its_declared_annotations(scratch):
    @register("liar", kind=ANALYSIS, summary="declares one annotation, returns another", provides=(Dependence,))
    def liar(net, ctx, opts):
        return PassResult(annotations=(Stability(net.fingerprint()),))

    with pytest.raises(PostconditionError, match=r"returned annotations \['Stability'\], declared \['Dependence'\]"):
        PassManager().run(small_net(), ["liar"], Context())


def test_a_pass_must_return_a_pass_result(scratch):
    @register("oldstyle", kind=ANALYSIS, summary="returns a bare value")
    def oldstyle(net, ctx, opts):
        return {"x": 1}

    with pytest.raises(PostconditionError, match="returned dict, not a PassResult"):
        PassManager().run(small_net(), ["oldstyle"], Context())


def test_a_required_annotation_missing_at_run_time_is_a_precondition_error(scratch):
    @register("needy", kind=ANALYSIS, summary="requires scores", requires=(Dependence,))
    def needy(net, ctx, opts):
        return PassResult()

    with pytest.raises(PreconditionError, match="requires Dependence"):
        PassManager().run_one(REGISTRY["needy"], small_net(), Context())


def test_contract_errors_are_internal_errors_with_their_own_exit_code():
    assert PostconditionError.exit_code == PreconditionError.exit_code == InternalError.exit_code == 3
    assert UsageError.exit_code == 2


def test_a_pass_bug_is_an_internal_error_naming_the_pass(scratch):
    @register("buggy", kind=ANALYSIS, summary="divides by zero")
    def buggy(net, ctx, opts):
        return 1 // 0

    with pytest.raises(InternalError, match="internal error in pass 'buggy': ZeroDivisionError"):
        PassManager().run(small_net(), ["buggy"], Context())


def test_annotations_are_stored_by_type_and_entries_timed():
    net = small_net()
    ctx = Context(box=box())
    PassManager().run(net, ["bounds"], ctx)
    assert set(ctx.annotations) == {DomainBounds, Stability}
    assert ctx.get(Stability).latest("bounds") is not None
    assert ctx.get(DomainBounds).matches(net)
    entry = ctx.log[0]
    assert entry["name"] == "bounds" and entry["kind"] == "analysis" and entry["seconds"] >= 0


# ---- options ---------------------------------------------------------------------------------------------------
def test_options_default_from_the_declaration_and_flat_values_reach_every_pass_that_declares_them():
    ctx = Context(options={"solver": "scip", "sparsity": 0.5})
    assert ctx.options.for_pass(REGISTRY["milp"]).solver == "scip"
    assert ctx.options.for_pass(REGISTRY["milp"]).stability_method == "auto"
    assert ctx.options.for_pass(REGISTRY["prune"]).sparsity == 0.5


def test_per_pass_values_win_over_flat_ones():
    opts = pipeline.Options({"score": "magnitude"}, {"drop": {"score": "dependence"}})
    assert opts.for_pass(REGISTRY["prune"]).score == "magnitude"
    assert opts.for_pass(REGISTRY["drop"]).score == "dependence"


@pytest.mark.parametrize("values,message", [
    ({"sparsity": 1.5}, "sparsity 1.5: expected a number >= 0 and < 1"),
    ({"sparsity": "half"}, "sparsity 'half': expected a number >= 0 and < 1"),
    ({"bits": 9}, "bits 9: expected a whole number >= 1 and <= 8"),
    ({"bits": 2.5}, "bits 2.5: expected a whole number >= 1 and <= 8"),
    ({"granularity": "block"}, "granularity 'block': expected one of layer, global"),
    ({"score": "dependence"}, "score 'dependence': expected one of magnitude, lap, fisher"),
    ({"bits": True}, "bits True: expected a whole number >= 1 and <= 8"),
])
def test_option_values_are_checked_against_their_declaration(values, message):
    ctx = Context(options=values)
    spec = REGISTRY["quantize"] if "bits" in values else REGISTRY["prune"]
    with pytest.raises(OptionError) as exc:
        ctx.options.for_pass(spec)
    assert str(exc.value) == message


def test_a_misspelt_option_is_refused_naming_it():
    with pytest.raises(OptionError, match="sparsty: unknown option"):
        pipeline.Options({"sparsty": 0.5}).check_names()
    with pytest.raises(OptionError, match="bits: not an option of pass 'prune'"):
        pipeline.Options({}, {"prune": {"bits": 4}}).check_names()
    with pytest.raises(UsageError, match="options for unknown pass 'prunes'"):
        pipeline.Options({}, {"prunes": {"sparsity": 0.1}}).check_names()


def test_shared_options_merge_their_choices_and_keep_one_type():
    merged = pipeline.all_option_specs()
    assert set(merged["score"].owners) == {"prune", "quantize", "drop"}
    assert set(merged["score"].choices) == {"magnitude", "lap", "fisher", "auto", "dependence"}
    assert merged["score"].default is None  # the passes' defaults differ, so none is shown


def test_option_declarations_are_typed_dataclasses_with_help(scratch):
    with pytest.raises(TypeError, match="not declared with onnxcomp.options.option"):
        @dataclass(frozen=True)
        class Bare:
            x: int = 3

        register("bare", kind=ANALYSIS, summary="x", options=Bare)(lambda net, ctx, opts: PassResult())


def test_every_registered_pass_is_fully_declared():
    pipeline.load_passes()
    assert set(REGISTRY) >= {"sample", "bounds", "falsify", "milp", "fold", "lookahead", "fisher", "dependence",
                             "prune", "quantize", "drop"}
    for spec in REGISTRY.values():
        assert spec.summary and spec.doc, spec.name
        assert spec.doc.splitlines()[0].startswith(f"``{spec.name}``"), spec.name  # one-line docstring: what it does
        for s in spec.option_specs():
            assert s.help and s.flag.startswith("--"), (spec.name, s.name)
        if spec.kind == ANALYSIS:
            assert spec.provides, spec.name
        if DOMAIN in spec.needs:
            assert spec.kind == ANALYSIS


def test_every_module_under_passes_registers_a_pass():
    import importlib
    import pkgutil

    import onnxcomp.passes as pkg

    modules = {fn.__module__ for fn in (s.fn for s in REGISTRY.values())}
    for info in pkgutil.walk_packages(pkg.__path__, "onnxcomp.passes."):
        if info.ispkg:
            continue
        importlib.import_module(info.name)
        assert info.name in modules, f"{info.name} registers no pass"


def test_the_cli_module_imports_no_pass_module():
    import ast
    from pathlib import Path

    import onnxcomp.cli

    tree = ast.parse(Path(onnxcomp.cli.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module] + \
               [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if "passes" in m.split(".")]
