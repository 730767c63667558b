"""Bad inputs to the dedup commands are clear errors or counted, listed skips."""

import io
import json

import numpy as np
import pytest
import skimage.data
from PIL import Image

from datascale.formats.wds import write_tar
from datascale.cli import main


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """A pool of 30 crops + 1 corrupt image (written as raw tars), indexed with dedup/tiny."""
    root = tmp_path_factory.mktemp("bad")
    photo = skimage.data.coffee()
    samples = [(f"p{i:03d}", "jpg", _jpeg(photo[10 * i:10 * i + 96, 8 * i:8 * i + 96]), {"labels": [0]})
               for i in range(30)]
    samples.append(("broken", "jpg", b"\xff\xd8\xff\xe0 not really a jpeg", {"labels": [0]}))
    shards = root / "shards"
    shards.mkdir()
    write_tar(shards / "shard-000000.tar", samples[:16])
    write_tar(shards / "shard-000001.tar", samples[16:])
    (shards / "sizes.json").write_text(json.dumps({"shard-000000.tar": 16, "shard-000001.tar": 15}))
    assert main(["-q", "dedup", "index", str(shards), "--out", str(root / "index"), "-c", "dedup/tiny"]) == 0
    return root


def _coco(root, images: list[tuple[int, str, bytes | None]]):
    folder = root / "det"
    (folder / "images" / "test").mkdir(parents=True, exist_ok=True)
    (folder / "annotations").mkdir(exist_ok=True)
    for _, name, data in images:
        if data is not None:
            (folder / "images" / "test" / name).write_bytes(data)
    coco = {"images": [{"id": i, "file_name": n, "width": 96, "height": 96} for i, n, _ in images],
            "annotations": [{"id": 10 + i, "image_id": i, "bbox": [1, 1, 5, 5], "category_id": 1}
                            for i, _, _ in images], "categories": [{"id": 1, "name": "thing"}]}
    path = folder / "annotations" / "instances_test.json"
    path.write_text(json.dumps(coco))
    return path


def test_undecodable_pool_images_are_counted_and_listed(index):
    complete = json.loads((index / "index" / "complete.json").read_text())
    assert complete["pool_images"] == 30 and complete["vectors"] == 30 * complete["pool_views"]
    assert complete["skipped_pool_images"] == {"undecodable_image": 1}
    skipped = json.loads((index / "index" / "vectors" / "block-000001.skipped.json").read_text())
    assert len(skipped["items"]) == 1 and skipped["items"][0].startswith("shard-000001.tar:broken")


def test_unreadable_test_images_are_counted_listed_and_kept(index, tmp_path, capsys):
    photo = skimage.data.coffee()
    coco = _coco(tmp_path, [(1, "a.jpg", _jpeg(photo[:96, :96])), (2, "b.jpg", b"garbage bytes"),
                            (3, "c.jpg", None), (4, "d.jpg", _jpeg(photo[200:296, 300:396]))])
    assert main(["dedup", "audit", str(index / "index"), "--testset", str(coco),
                 "--out", str(tmp_path / "audit"), "-c", "dedup/tiny"]) == 0
    assert "2 unreadable" in capsys.readouterr().out
    summary = json.loads((tmp_path / "audit" / "det_test" / "summary.json").read_text())
    assert summary["test_images"] == 4 and summary["readable_images"] == 2
    assert {u["test_id"] for u in summary["unreadable"]} == {"2", "3"}
    assert any("FileNotFoundError" in u["error"] for u in summary["unreadable"])
    cleaned = json.loads((tmp_path / "audit" / "det_test" / "clean" / "instances_test.json").read_text())
    assert {2, 3} <= {im["id"] for im in cleaned["images"]}  # not checked, so not removed
    report = (tmp_path / "audit" / "det_test" / "report.md").read_text()
    assert "## Unreadable test images (2)" in report and "b.jpg" in report


def test_a_test_set_without_images_is_an_error(index, tmp_path, capsys):
    coco = _coco(tmp_path, [])
    assert main(["dedup", "audit", str(index / "index"), "--testset", str(coco),
                 "--out", str(tmp_path / "audit"), "-c", "dedup/tiny"]) == 1
    assert "has no images" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["dedup", "audit", str(index / "index"), "--testset", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "audit"), "-c", "dedup/tiny"]) == 1


def test_querying_with_another_embedder_is_an_error(index, tmp_path, capsys):
    coco = _coco(tmp_path, [(1, "a.jpg", _jpeg(skimage.data.coffee()[:96, :96]))])
    assert main(["dedup", "audit", str(index / "index"), "--testset", str(coco), "--embedder", "backbone",
                 "--out", str(tmp_path / "audit"), "-c", "dedup/tiny"]) == 1
    err = capsys.readouterr().err
    assert "built with the 'pixels' embedder" in err and "--embedder pixels" in err


def test_an_index_whose_embedder_changed_dimension_is_an_error(index, tmp_path, capsys):
    import shutil
    copy = tmp_path / "index"
    shutil.copytree(index / "index", copy)
    meta = json.loads((copy / "index.json").read_text())
    meta["embedder_config"]["pixels"]["gray_coefficients"] = 64   # queries would be 96-d, index is 128-d
    (copy / "index.json").write_text(json.dumps(meta))
    coco = _coco(tmp_path, [(1, "a.jpg", _jpeg(skimage.data.coffee()[:96, :96]))])
    assert main(["dedup", "audit", str(copy), "--testset", str(coco),
                 "--out", str(tmp_path / "audit"), "-c", "dedup/tiny"]) == 1
    assert "differs in: dim, params" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--threshold", "1.5"], ["--threshold", "-1.01"],
                                  ["--set", "audit.threshold=2"]])
def test_a_threshold_outside_minus_one_to_one_is_a_config_error(index, tmp_path, capsys, flag):
    coco = _coco(tmp_path, [(1, "a.jpg", _jpeg(skimage.data.coffee()[:96, :96]))])
    assert main(["dedup", "audit", str(index / "index"), "--testset", str(coco), *flag,
                 "--out", str(tmp_path / "audit"), "-c", "dedup/tiny"]) == 2
    assert "audit.threshold" in capsys.readouterr().err and not (tmp_path / "audit").exists()


def test_auditing_an_unfinished_index_is_an_error(index, tmp_path, capsys):
    (tmp_path / "half").mkdir()
    coco = _coco(tmp_path, [(1, "a.jpg", _jpeg(skimage.data.coffee()[:96, :96]))])
    assert main(["dedup", "audit", str(tmp_path / "half"), "--testset", str(coco),
                 "--out", str(tmp_path / "audit")]) == 1
    assert "not a finished dedup index" in capsys.readouterr().err


def test_a_pool_that_is_not_a_pool_is_an_error(tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    assert main(["dedup", "index", str(tmp_path / "nothing"), "--out", str(tmp_path / "i")]) == 1
    assert "neither a subset folder" in capsys.readouterr().err


def test_a_test_set_with_no_readable_image_is_audited_and_reported(index, tmp_path):
    coco = _coco(tmp_path, [(1, "a.jpg", b"not an image"), (2, "b.jpg", None)])
    assert main(["-q", "dedup", "audit", str(index / "index"), "--testset", str(coco),
                 "--out", str(tmp_path / "audit"), "-c", "dedup/tiny"]) == 0
    summary = json.loads((tmp_path / "audit" / "det_test" / "summary.json").read_text())
    assert summary["readable_images"] == 0 and summary["unreadable_images"] == 2
    assert summary["cleaned"]["images_kept"] == 2
