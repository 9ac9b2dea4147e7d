"""The model card exists twice: at the repository root (what a reader of the repository sees) and
shipped with the weights (src/refine_by_align/weights/default/, what an installed package has).
Nothing else keeps them the same."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_shipped_model_card_is_the_repository_one():
    root = REPO / "MODEL_CARD.md"
    shipped = REPO / "src" / "refine_by_align" / "weights" / "default" / "MODEL_CARD.md"
    assert root.is_file() and shipped.is_file()
    assert shipped.read_bytes() == root.read_bytes(), (
        "MODEL_CARD.md and src/refine_by_align/weights/default/MODEL_CARD.md differ: edit the root one and copy it"
    )
