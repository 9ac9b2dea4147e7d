"""The demo's printed line says what its figures are (issue 17, item 10)."""

import numpy as np
from PIL import Image

from refine_by_align.demo.examples import EXAMPLES_DIR
from refine_by_align.demo.run import _note_lines, _summary_line
from refine_by_align.evaluation.cases import load_case


def test_demo_line_names_the_figures_and_the_direction():
    case = load_case(EXAMPLES_DIR / "badge")
    image, target = np.asarray(case.image), np.asarray(case.target)
    closer = Image.fromarray(((image.astype(int) + target) // 2).astype(np.uint8))  # halfway to the target
    line = _summary_line("badge", 1.234, case, closer)
    assert line.startswith("badge: 1.23 s; masked PSNR vs the artifact-free target: ")
    after, before = (float(x) for x in line.split("target: ")[1].split(" dB after, ")[0:1] + line.split("after, ")[1].split(" dB before")[0:1])
    assert after > before and "dB: the masked part is closer to the target)" in line.split(" before (+")[1], line
    worse = _summary_line("badge", 1.0, case, Image.fromarray(255 - target))
    assert "further from the target" in worse and "(-" in worse, worse


def test_demo_says_each_fallback_once():
    """A note (e.g. the ALIKED weights missing on a fresh clone, where the alignment uses SIFT
    alone) is printed under the first example that has it, not again under the next."""
    seen: set[str] = set()
    aliked = "ALIKED matcher unavailable (weights not found): dense alignment uses SIFT alone"
    assert _note_lines([aliked, "the field misses its own matches by 3.6 px"], seen) == [f"  note: {aliked}", "  note: the field misses its own matches by 3.6 px"]
    assert _note_lines([aliked], seen) == []
    assert _note_lines([aliked, "no warp is trusted in the mask"], seen) == ["  note: no warp is trusted in the mask"]
