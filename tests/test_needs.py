"""``onnxcomp passes NAME`` shows what a run of NAME needs from the user, and that is what the run checks:
for every pass and composite and every combination of given inputs, the run refuses exactly when one of
the displayed needs is not met (the pass manager's own per-pass checks and the run's refusal without
inputs), and the refusal names a displayed flag."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest

from onnxcomp import api, cli
from onnxcomp.errors import UsageError
from onnxcomp.ir import Box
from onnxcomp.pipeline import COMPOSITES, DATA, DOMAIN, INPUTS, LABELS, NEEDS, REGISTRY, Context, Options, check_needs, \
    expand, load_passes, plan
from onnxcomp.onnxio import load_model
from onnxcomp.reader import lower

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_2x32_l1.onnx"
GIVEN = ("domain", "data", "labels")
FLAG_TO_NEED = {flag: need for need, (_, flag) in NEEDS.items()}

load_passes()
NAMES = sorted(set(REGISTRY) | set(COMPOSITES))


def printed(*argv: str) -> str:
    """What ``onnxcomp ARGV`` prints on stdout (the command line's own console, in this process)."""
    buf = io.StringIO()
    cli.out.file = buf
    try:
        assert cli.main(list(argv)) == 0
    finally:
        cli.out.file = None
    return buf.getvalue()


def shown(name: str) -> tuple[str, list[str]]:
    """The first needs line of ``onnxcomp passes NAME`` (what the user reads), and the lines under it."""
    lines = printed("passes", name).splitlines()
    i = next(k for k, line in enumerate(lines) if line.strip().startswith("needs:"))
    more = []
    for line in lines[i + 1:]:
        if not line.strip().startswith("with "):
            break
        more.append(line.strip())
    return lines[i].split("needs:", 1)[1].strip(), more


def displayed_needs(text: str) -> set[str]:
    """The needs named by a needs line: ``FLAG (who why); FLAG (who why)`` or ``nothing from the user``."""
    if text == "nothing from the user":
        return set()
    return {FLAG_TO_NEED[part.rsplit(" (", 1)[0]] for part in text.split("; ")}


def met(need: str, given: set) -> bool:
    return {DOMAIN: "domain" in given, INPUTS: bool(given & {"domain", "data"}), DATA: "data" in given,
            LABELS: "labels" in given}[need]


def context(given: set, options: dict | None = None) -> Context:
    return Context(box=Box(np.zeros(64), np.ones(64)) if "domain" in given else None,
                   data=np.zeros((4, 64)) if "data" in given else None,
                   labels=np.zeros(4, dtype=np.int64) if "labels" in given else None, options=Options(options or {}))


def manager_refuses(name: str, ctx: Context, net) -> bool:
    """Whether the pass manager's per-pass checks refuse the planned run (before any pass runs)."""
    try:
        for step in plan(expand([name]), ctx):
            check_needs(REGISTRY[step], net, ctx)
    except UsageError:
        return True
    return False


@pytest.fixture(scope="module")
def net():
    return lower(load_model(MODEL))


@pytest.mark.parametrize("name", NAMES)
def test_the_needs_shown_are_the_needs_checked(name, net):
    text, _ = shown(name)
    needs = displayed_needs(text)
    for combo in itertools.chain.from_iterable(itertools.combinations(GIVEN, k) for k in range(4)):
        given = set(combo)
        if "labels" in given and "data" not in given:
            continue  # labels come with data rows (the API refuses them alone)
        refused = manager_refuses(name, context(given), net) or not given & {"domain", "data"}
        assert refused == (not all(met(n, given) for n in needs)), (name, given, text)


@pytest.mark.parametrize("name", NAMES)
def test_a_run_without_inputs_is_refused_naming_a_shown_flag(name):
    text, _ = shown(name)
    with pytest.raises(UsageError) as exc:
        api.compress(str(MODEL), name, samples=10, corners=2)
    flag = str(exc.value).split("give ", 1)[1].split(" (", 1)[0]
    assert FLAG_TO_NEED[flag] in displayed_needs(text), (str(exc.value), text)


def test_quantize_says_it_needs_inputs_and_more_with_fisher_scores(net):
    text, more = shown("quantize")
    assert text != "nothing from the user" and displayed_needs(text) == {INPUTS}
    assert more == ["with --score fisher: --data (fisher needs calibration samples)"]
    # the option line is what the run checks with that option: a domain alone is refused, data rows are not
    assert manager_refuses("quantize", context({"domain"}, {"score": "fisher"}), net)
    assert not manager_refuses("quantize", context({"data"}, {"score": "fisher"}), net)
    with pytest.raises(UsageError, match="^give --domain or --data"):
        api.compress(str(MODEL), "quantize", bits=2)


def test_the_table_shows_the_same_needs():
    rows = {line.split("│")[0].strip(): line.split("│")[2].strip() for line in printed("passes").splitlines()
            if line.count("│") >= 5 and line.split("│")[0].strip()}
    for name in NAMES:
        want = {NEEDS[n][1] for n in displayed_needs(shown(name)[0])}
        assert set(filter(None, rows[name].split(", "))) == want, name
