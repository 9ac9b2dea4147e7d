"""``refine-by-align detect`` (issue 15 part 2) on a synthetic scene written to files."""

import cv2
import numpy as np
import pytest
from PIL import Image

from refine_by_align.cli import main


def _write_scene(tmp_path):
    rng = np.random.default_rng(0)
    ref = cv2.GaussianBlur(rng.integers(0, 255, (240, 240, 3)).astype(np.uint8), (0, 0), 2.0)
    for _ in range(120):
        x, y = (int(v) for v in rng.integers(0, 220, 2))
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.rectangle(ref, (x, y), (x + int(rng.integers(5, 25)), y + int(rng.integers(5, 25))), c, -1)
    M = np.float32([[1.05, 0, 12], [0, 1.05, 8]])
    img = cv2.warpAffine(ref, M, (272, 272), flags=cv2.INTER_LINEAR, borderValue=(128, 128, 128))
    true = np.zeros(img.shape[:2], np.uint8)
    cv2.circle(true, (140, 130), 22, 1, -1)
    smeared = np.clip(cv2.GaussianBlur(img, (0, 0), 9.0).astype(np.int16) + np.int16([40, -30, 20]), 0, 255).astype(np.uint8)
    img[true > 0] = smeared[true > 0]
    paths = {k: tmp_path / f"{k}.png" for k in ("image", "reference", "reference_mask")}
    Image.fromarray(img).save(paths["image"])
    Image.fromarray(ref).save(paths["reference"])
    Image.fromarray(np.full(ref.shape[:2], 255, np.uint8)).save(paths["reference_mask"])
    return paths, true.astype(bool)


def test_detect_writes_mask_and_heatmap(tmp_path, capsys):
    paths, true = _write_scene(tmp_path)
    out, heat = tmp_path / "proposal.png", tmp_path / "heat.png"
    rc = main(["detect", "--image", str(paths["image"]), "--reference", str(paths["reference"]),
               "--reference-mask", str(paths["reference_mask"]), "--output", str(out), "--heatmap", str(heat)])
    assert rc == 0, capsys.readouterr().err
    m = np.asarray(Image.open(out)) > 127
    assert m.shape == true.shape
    assert (m & true).sum() / true.sum() > 0.6 and (m & true).sum() / (m | true).sum() > 0.4
    assert Image.open(heat).size == (272, 272) and Image.open(heat).mode == "RGB"
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--output", "{image}"], "refusing to overwrite an input"),
        (["--output", "{tmp}/out.png", "--reference-mask", "{tmp}/missing.png"], "missing.png"),
        (["--output", "{tmp}/out.xyz"], "unknown image extension"),
        (["--output", "{tmp}/out.png", "--threshold", "-1"], "--threshold"),
        (["--output", "{tmp}/out.png", "--threshold", "7"], "--threshold for the learned method is a probability"),
        (["--output", "{tmp}/out.png", "--method", "colour", "--threshold", "0"], "--threshold for the colour method"),
    ],
)
def test_detect_bad_inputs_are_one_line(tmp_path, capsys, extra, message):
    paths, _ = _write_scene(tmp_path)
    args = [a.format(image=paths["image"], tmp=tmp_path) for a in extra]
    rc = main(["detect", "--image", str(paths["image"]), "--reference", str(paths["reference"]), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
