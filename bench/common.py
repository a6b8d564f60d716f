"""Helpers shared by the sampling and stability benchmarks: the model set, domains, tables, CSV, plots.

Each model is named once here with the file it comes from and the domains it is benchmarked on, so both
benchmarks speak of the same models.  Nothing here times anything or asserts a target.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from onnxcomp.domain import parse_domain  # noqa: E402
from onnxcomp.ir import Box, Network  # noqa: E402
from onnxcomp.onnxio import load_model  # noqa: E402
from onnxcomp.reader import lower  # noqa: E402

MODELS = ROOT / "models"
EXTERNAL = MODELS / "external"
OUT = ROOT / "bench" / "out"


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: its short name, ONNX file and the domains (name -> ``--domain`` spec)."""

    name: str
    path: Path
    domains: dict

    def load(self):
        """(ONNX model, lowered Network)."""
        model = load_model(self.path)
        return model, lower(model, source=str(self.path))

    def box(self, domain: str, net: Network) -> Box:
        return parse_domain(self.domains[domain], net.input_size)


def _fixture(name: str) -> ModelSpec:
    return ModelSpec(name, MODELS / f"{name}.onnx", {"0:1": "0:1"})


ACASXU = EXTERNAL / "acasxu"
MNISTFC = EXTERNAL / "mnistfc"
TLL = EXTERNAL / "tll"
BOXES = MODELS / "boxes"

SPECS = {s.name: s for s in [
    *(_fixture(n) for n in ["digits_2x32", "digits_2x32_l1", "digits_3x48_l1", "digits_2x100", "digits_2x100_l1",
                            "mnist_2x100", "mnist_2x100_l1", "mnist_2x200_l1", "mnist_3x100_l1"]),
    ModelSpec("acasxu_1_1", ACASXU / "ACASXU_run2a_1_1_batch_2000.onnx",
              {"prop_1": str(ACASXU / "prop_1.vnnlib"), "prop_3": str(ACASXU / "prop_3.vnnlib")}),
    ModelSpec("mnistfc_256x2", MNISTFC / "mnist-net_256x2.onnx",
              {"prop_0_0.03": str(MNISTFC / "prop_0_0.03.vnnlib"), "0:1": "0:1"}),
    ModelSpec("tll_n2_N8", TLL / "tll_n2_N8_instance_0_0.onnx", {"property_N8_0": str(TLL / "property_N8_0.vnnlib")}),
    ModelSpec("tll_n2_N16", TLL / "tll_n2_N16_instance_1_0.onnx",
              {"property_N16_0": str(TLL / "property_N16_0.vnnlib")}),
    ModelSpec("acasxu_5_9", ACASXU / "ACASXU_run2a_5_9_batch_2000.onnx", {"prop_1": str(ACASXU / "prop_1.vnnlib")}),
    # the scale set (issue 11): deeper and wider networks on L-infinity boxes around test images
    *(ModelSpec(n, MODELS / f"{n}.onnx", {f"img0_eps{e}": str(BOXES / f"mnist_img0_eps{e}.vnnlib")
                                          for e in ("0.015", "0.03", "0.05")})
      for n in ("mnist_4x256", "mnist_6x256", "mnist_8x200")),
    ModelSpec("mnist_2x800_l1", MODELS / "mnist_2x800_l1.onnx", {"0:1": "0:1"}),
    ModelSpec("mnistfc_256x4", MNISTFC / "mnist-net_256x4.onnx", {"prop_1_0.03": str(MNISTFC / "prop_1_0.03.vnnlib")}),
    ModelSpec("eran_9x200", EXTERNAL / "eran" / "mnist_relu_9_200.onnx",
              {"idx_8098_eps_0.015": str(EXTERNAL / "eran" / "mnist_spec_idx_8098_eps_0.01500.vnnlib")}),
]}


def print_table(rows: list[dict], columns: list[str], title: str = "") -> None:
    """A plain fixed-width table on stdout (benchmarks print; the library never does)."""
    if title:
        print(f"\n{title}")
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), flush=True)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    return str(v)


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
