"""Budgets back off instead of refusing: when the strength chosen on the validation half fails on the
held-out half, the strongest weaker setting that meets the budget on both halves is used."""

from __future__ import annotations

import numpy as np
import pytest

import onnxcomp
from onnxcomp.fidelity import split_halves
from onnxcomp.reader import read

MODEL = "models/digits_2x32_l1.onnx"


def skewed_rows(seed: int = 0) -> np.ndarray:
    """Digits rows arranged so that the held-out half gets the rows closest to a decision boundary (which
    pruning flips first) and the validation half the safest ones."""
    d = np.load("models/data/digits_test.npz")
    x = d["x"]
    logits = read(MODEL).forward(x)
    top = np.sort(logits, axis=1)
    order = np.argsort(top[:, -1] - top[:, -2])  # smallest margin first
    val, held = split_halves(x.shape[0], None, seed)
    out = np.empty_like(x)
    out[held] = x[order[:held.size]]
    out[val] = x[order[::-1][:val.size]]
    return out


@pytest.mark.slow
def test_a_budget_met_on_validation_but_not_held_out_backs_off():
    x = skewed_rows()
    result = onnxcomp.compress(MODEL, "lap", data=x, min_agreement=99, samples=0, corners=0)
    prune = next(p for p in result.report["passes"] if p["name"] == "prune")
    budget = prune["budget"]
    assert budget["backed_off_from"] is not None and budget["backed_off_from"] > budget["level"]
    assert budget["held_out_meets"] and budget["held_out"]["top1_agreement"] >= 0.99
    # every trial is reported, with the half it was measured on; the failed level failed on held-out
    failed = [t for t in budget["search"] if t["sparsity"] == budget["backed_off_from"] and t["half"] == "held_out"]
    assert failed and not failed[0]["meets"]
    chosen = [t for t in budget["search"] if t["sparsity"] == budget["level"]]
    assert {t["half"] for t in chosen} == {"validation", "held_out"} and all(t["meets"] for t in chosen)
    assert result.report["fidelity"]["budget"]["met_on_held_out"]
    assert any("backed off" in w for w in result.report["warnings"])


def test_a_budget_finer_than_the_rows_resolve_is_warned_about():
    d = np.load("models/data/digits_calib.npz")  # 180 rows: 90 held out, one flip = 1.1 %
    result = onnxcomp.compress(MODEL, "lap", data=d["x"], labels=d["y"], min_agreement=99.5, samples=0, corners=0)
    budget = next(p for p in result.report["passes"] if p["name"] == "prune")["budget"]
    assert budget["resolution"]["held_out_rows"] == 90
    assert budget["resolution"]["one_flip_pct"] == pytest.approx(100 / 90, abs=1e-4)
    assert any("finer than the data resolves" in w for w in result.report["warnings"])
