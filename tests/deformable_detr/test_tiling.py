"""tools/tile_dataset.py and deformable_detr.data.tiling: windows cover the image
with the overlap asked, a cut box is kept clipped when enough of it is inside, the
tiles' pixels and boxes are the image's, the result is a COCO dataset configs/custom/
reads; bad options are clear errors; the NEON training image when prepared."""

import json
import os

import cv2
import numpy as np
import pytest

from deformable_detr.data.coco_json import coco_json_dataset
from deformable_detr.data.tiling import tile_boxes, window_grid, window_starts

from ..scripts import load_script
from .real_images import neon_trees_or_skip, write_image


@pytest.mark.parametrize("length, size, overlap", [(1000, 400, 100), (401, 400, 0), (50, 400, 10)])
def test_windows_cover_with_the_overlap(length, size, overlap):
    starts = window_starts(length, size, overlap)
    ends = [min(s + size, length) for s in starts]
    assert starts[0] == 0 and ends[-1] == length
    assert all(e - s == min(size, length) for s, e in zip(starts, ends))
    assert all(end - next_start >= overlap for end, next_start in zip(ends, starts[1:]))


def test_bad_window_options():
    with pytest.raises(
        ValueError, match="window size 100, overlap 100; expected 0 <= overlap < size"
    ):
        window_starts(500, 100, 100)


def test_cut_boxes_kept_when_enough_is_inside():
    boxes = np.array([[10, 10, 30, 30], [80, 10, 120, 30], [70, 70, 110, 130]], np.float64)
    keep, tiled = tile_boxes(boxes, (0, 0, 100, 100), min_fraction=0.5)
    # the second box is half inside (kept, clipped), the third 0.375 inside (left out)
    assert keep.tolist() == [0, 1]
    assert tiled.tolist() == [[10, 10, 30, 30], [80, 10, 100, 30]]
    keep, tiled = tile_boxes(boxes, (50, 50, 150, 150), min_fraction=0.3)
    assert keep.tolist() == [2] and tiled.tolist() == [[20, 20, 60, 80]]


def test_tile_dataset_writes_a_coco_dataset(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "big.png", 250, 180, seed=3)
    boxes = [[5, 5, 20, 20], [95, 40, 30, 30], [200, 150, 40, 25]]
    coco = {
        "images": [{"id": 4, "file_name": "big.png", "width": 250, "height": 180}],
        "annotations": [
            {"id": i + 1, "image_id": 4, "category_id": 9, "bbox": b, "iscrowd": 0}
            for i, b in enumerate(boxes)
        ],
        "categories": [{"id": 9, "name": "crown"}],
    }
    (tmp_path / "big.json").write_text(json.dumps(coco))
    out = tmp_path / "tiles"
    load_script("tools/tile_dataset.py").main(
        ["--json", str(tmp_path / "big.json"), "--image-root", str(images), "--output", str(out),
         "--tile-size", "120", "--overlap", "20", "--min-fraction", "0.5"]
    )  # fmt: skip
    tiles = json.loads((out / "big.json").read_text())
    assert tiles["categories"] == coco["categories"]
    assert len(tiles["images"]) == len(window_grid(180, 250, 120, 20)) == 6
    image = cv2.imread(str(images / "big.png"))
    for tile in tiles["images"]:
        x0, y0 = (int(v[1:]) for v in tile["file_name"][:-4].split("_")[-2:])
        pixels = cv2.imread(str(out / "images" / tile["file_name"]))
        assert np.array_equal(pixels, image[y0 : y0 + 120, x0 : x0 + 120])
        expected = []  # brute force: each box's part inside the tile, if at least half of it
        for x, y, w, h in boxes:
            ix0, iy0 = max(x, x0), max(y, y0)
            ix1, iy1 = min(x + w, x0 + tile["width"]), min(y + h, y0 + tile["height"])
            if ix1 > ix0 and iy1 > iy0 and (ix1 - ix0) * (iy1 - iy0) >= 0.5 * w * h:
                expected.append([ix0 - x0, iy0 - y0, ix1 - ix0, iy1 - iy0])
        got = [a["bbox"] for a in tiles["annotations"] if a["image_id"] == tile["id"]]
        assert got == expected
    # the box across the seam at x=100-120 is kept, clipped, in the top tiles on both sides
    assert sum(a["bbox"][2] == 25 for a in tiles["annotations"]) == 2
    dicts = coco_json_dataset("tiles_test", str(out / "big.json"), str(out / "images"))
    assert sum(len(d["annotations"]) for d in dicts) == len(tiles["annotations"])


def test_tile_tool_bad_input(tmp_path):
    tool = load_script("tools/tile_dataset.py")
    with pytest.raises(SystemExit, match="no such annotation file"):
        tool.main(["--json", str(tmp_path / "x.json"), "--image-root", str(tmp_path),
                   "--output", str(tmp_path / "o")])  # fmt: skip
    (tmp_path / "x.json").write_text(
        json.dumps({"images": [], "categories": [{"id": 1, "name": "a"}]})
    )
    with pytest.raises(SystemExit, match="min_fraction=0.0; expected a fraction in"):
        tool.main(["--json", str(tmp_path / "x.json"), "--image-root", str(tmp_path),
                   "--output", str(tmp_path / "o"), "--min-fraction", "0"])  # fmt: skip


def test_neon_training_image_tiles(tmp_path):
    root = neon_trees_or_skip()
    from deformable_detr.data.tiling import tile_coco_dataset

    out = tile_coco_dataset(
        os.path.join(root, "train.json"),
        os.path.join(root, "images"),
        str(tmp_path),
        tile_size=400,
        overlap=100,
        output_name="train_tiles.json",
    )
    tiles = json.load(open(out))
    assert len(tiles["images"]) == len(window_grid(2472, 2299, 400, 100))
    # every crown (at most 106 pixels across, under the overlap plus the 0.5 rule) is in a tile
    assert len(tiles["annotations"]) >= 574
