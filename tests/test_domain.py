"""``--domain``: LO:HI, .npz lo/hi, .vnnlib (the shipped VNN-COMP files and hand-written edge cases),
the data hull, and every way a domain can be wrong (one ``InputError`` line each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxcomp.domain import data_hull, parse_domain, read_vnnlib
from onnxcomp.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
EXT = ROOT / "models" / "external"


def one_line_error(fn, *args, match: str):
    with pytest.raises(InputError, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value)


# ---- LO:HI ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,lo,hi", [("0:1", 0.0, 1.0), ("-1:1", -1.0, 1.0), (" -0.5 : 2e-1 ", -0.5, 0.2),
                                        ("3:3", 3.0, 3.0)])
def test_range_applies_to_every_input(spec, lo, hi):
    box = parse_domain(spec, 7)
    assert box.size == 7 and np.all(box.lo == lo) and np.all(box.hi == hi)
    assert box.source == spec.strip()


@pytest.mark.parametrize("spec,match", [
    ("1:0", "lo > hi at input 0"),
    ("nan:1", "input 0 is NaN"),
    ("0:inf", "input 0 is unbounded"),
    ("-inf:0", "input 0 is unbounded"),
    ("a:b", "LO and HI must be numbers"),
    ("0-1", "expected LO:HI"),
    ("0:1:2", "expected LO:HI"),
])
def test_bad_range(spec, match):
    one_line_error(parse_domain, spec, 4, match=match)


# ---- .npz lo/hi -------------------------------------------------------------------------------------
def test_npz_arrays_and_scalars(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, lo=np.arange(6.0).reshape(2, 3), hi=np.arange(6.0).reshape(2, 3) + 1)
    box = parse_domain(str(path), 6)
    assert np.array_equal(box.lo, np.arange(6.0)) and np.array_equal(box.hi, np.arange(6.0) + 1)
    scalar = tmp_path / "s.npz"
    np.savez(scalar, lo=np.array(-1), hi=np.array([2.0]))
    box = parse_domain(str(scalar), 4)
    assert np.all(box.lo == -1) and np.all(box.hi == 2)


@pytest.mark.parametrize("arrays,match", [
    ({"lo": np.zeros(3), "hi": np.ones(3)}, "domain has 3 inputs but the model takes 4"),
    ({"lo": np.zeros(4), "hi": np.ones(5)}, "'lo' has 4 entries but 'hi' has 5"),
    ({"lo": np.ones(4), "hi": np.zeros(4)}, "lo > hi at input 0"),
    ({"lo": np.array([0, np.nan, 0, 0]), "hi": np.ones(4)}, "input 1 is NaN"),
    ({"lo": np.zeros(4), "hi": np.array([1, 1, np.inf, 1])}, "input 2 is unbounded"),
    ({"low": np.zeros(4), "high": np.ones(4)}, "needs arrays 'lo' and 'hi' \\(has low, high\\)"),
    ({"lo": np.array(["a"] * 4), "hi": np.ones(4)}, "'lo' has dtype <U1, expected numbers"),
])
def test_bad_npz(tmp_path, arrays, match):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    one_line_error(parse_domain, str(path), 4, match=match)


def test_missing_and_corrupt_npz(tmp_path):
    one_line_error(parse_domain, str(tmp_path / "none.npz"), 4, match="no such file")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    one_line_error(parse_domain, str(bad), 4, match="cannot read .npz")


# ---- data hull ----------------------------------------------------------------------------------------
def test_data_hull_streams_a_memory_map(tmp_path):
    x = np.random.default_rng(0).uniform(-3, 5, (1000, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    box = data_hull(mm, chunk=128)
    assert np.array_equal(box.lo, x.min(axis=0)) and np.array_equal(box.hi, x.max(axis=0))
    assert parse_domain("data", 6, mm).source == "data hull"
    one_line_error(parse_domain, "data", 6, match="--domain data: needs --data")


# ---- vnnlib -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path,n", [
    ("acasxu/prop_1.vnnlib", 5), ("acasxu/prop_3.vnnlib", 5), ("mnistfc/prop_0_0.03.vnnlib", 784),
    ("oval21/cifar_base_kw-img1598-eps0.0026143790849673205.vnnlib", 3072), ("tll/property_N8_0.vnnlib", 2),
    ("vnncomp-test/test_nano.vnnlib", 1), ("vnncomp-test/test_tiny.vnnlib", 1), ("vnncomp-test/test_small.vnnlib", 1),
])
def test_shipped_vnnlib_files(path, n):
    box = parse_domain(str(EXT / path), n)
    assert box.size == n and np.all(box.lo <= box.hi) and np.all(np.isfinite(box.lo))
    assert box.note == ""
    if "cifar" in path:  # an l_inf ball around one image: every pixel has a small, non-empty range
        assert np.all(box.hi > box.lo) and np.all(box.hi - box.lo < 0.05)


def test_acasxu_prop1_values():
    box = read_vnnlib(str(EXT / "acasxu/prop_1.vnnlib"), 5)
    assert box.lo[0] == 0.6 and box.hi[0] == 0.679857769
    assert np.array_equal(box.lo[1:3], [-0.5, -0.5]) and np.array_equal(box.hi[1:3], [0.5, 0.5])


def test_mnistfc_property_is_an_eps_ball_clipped_to_0_1():
    box = read_vnnlib(str(EXT / "mnistfc/prop_0_0.03.vnnlib"), 784)
    width = box.hi - box.lo
    assert np.all(box.lo >= 0) and np.all(box.hi <= 1)
    assert np.all(width <= 0.06 + 1e-6) and np.any(np.isclose(width, 0.06))


def write(tmp_path, text, name="p.vnnlib"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


DECLARE2 = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"


def test_disjunction_becomes_the_hull_with_a_note(tmp_path):
    text = DECLARE2 + """
    ; two boxes
    (assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1))
                (and (>= X_0 2) (<= X_0 3) (>= X_1 -1) (<= X_1 0.5))))
    (assert (<= Y_0 0))
    """
    box = parse_domain(write(tmp_path, text), 2)
    assert np.array_equal(box.lo, [0, -1]) and np.array_equal(box.hi, [3, 1])
    assert "2 input boxes" in box.note and "hull" in box.note


def test_either_argument_order_strict_bounds_and_negative_literals(tmp_path):
    text = DECLARE2 + "(assert (<= 0.25 X_0))\n(assert (> 1 X_0))\n(assert (>= X_1 (- 2)))\n(assert (< X_1 -1e-1))\n"
    box = read_vnnlib(write(tmp_path, text), 2)
    assert np.array_equal(box.lo, [0.25, -2.0]) and np.array_equal(box.hi, [1.0, -0.1])


def test_non_box_input_constraints_are_ignored_with_a_note(tmp_path):
    text = DECLARE2 + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n(assert (>= X_1 0))\n" \
                      "(assert (<= (+ X_0 X_1) 1))\n"
    box = read_vnnlib(write(tmp_path, text), 2)
    assert np.array_equal(box.hi, [1, 1])
    assert "1 input constraint(s)" in box.note


@pytest.mark.parametrize("body,match", [
    ("(assert (<= Y_0 0))", "no input bounds found"),
    ("(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))", "input X_1 is unbounded"),
    ("(assert (<= X_0 0))\n(assert (>= X_0 1))\n(assert (<= X_1 1))\n(assert (>= X_1 0))", "empty"),
    ("(assert (<= X_0 1)\n", "unbalanced '\\('"),
    ("(assert (<= X_0 1)))", "unbalanced '\\)'"),
    ("(assert (<= X_5 1))", "constraint on X_5 beyond the 2 inputs"),
    ("(assert (<= X_0 nan))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n(assert (>= X_1 0))", "bound on X_0 is NaN"),
])
def test_bad_vnnlib(tmp_path, body, match):
    one_line_error(parse_domain, write(tmp_path, DECLARE2 + body), 2, match=match)


def test_vnnlib_of_the_wrong_size(tmp_path):
    one_line_error(parse_domain, str(EXT / "acasxu/prop_1.vnnlib"), 784, match="declares 5 inputs but the model takes 784")
    one_line_error(parse_domain, write(tmp_path, "(declare-const Y_0 Real)\n"), 2, match="declares no inputs")
    one_line_error(parse_domain, str(tmp_path / "none.vnnlib"), 2, match="no such file")
