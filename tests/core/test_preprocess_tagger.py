"""The WD14-style ONNX tagger, against a tiny model built here with the onnx package."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from core.cli import main
from core.errors import InvalidOptionError, ModelLoadError
from core.preprocess.pipeline import PreprocessOptions, preprocess_folder
from core.preprocess.tagger import WD14Tagger, tag_to_text

SIDE = 8
# (name, category, bias): a constant logit, plus a colour term for the two background tags.
TAGS = [
    ("general", 9, 2.0),
    ("explicit", 9, -4.0),
    ("red_background", 0, -2.0),
    ("blue_background", 0, -2.0),
    ("smile", 0, 0.0),  # exactly 0.5
    ("^_^", 0, 2.0),  # 0.88, a kaomoji keeps its underscore
    ("hero_(series)", 4, 3.0),  # 0.95: above the character threshold
    ("villain", 4, 1.0),  # 0.73: above the general threshold only, so not written
]


def build_tagger_dir(directory: Path) -> Path:
    """model.onnx: sigmoid(flatten(x) @ W + b) on (1, 8, 8, 3) BGR input; selected_tags.csv."""
    n_in, n_tags = SIDE * SIDE * 3, len(TAGS)
    weights = np.zeros((SIDE, SIDE, 3, n_tags), dtype=np.float32)
    a = 6.0 / (SIDE * SIDE * 255.0)  # a full-intensity colour adds +6 to the logit
    names = [t[0] for t in TAGS]
    red, blue = names.index("red_background"), names.index("blue_background")
    weights[:, :, 2, red], weights[:, :, 0:2, red] = a, -a / 2  # BGR: channel 2 is red
    weights[:, :, 0, blue], weights[:, :, 1:3, blue] = a, -a / 2
    bias = np.array([t[2] for t in TAGS], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["output"]),
        ],
        "tiny_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, SIDE, SIDE, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n_tags])],
        initializer=[
            helper.make_tensor("shape", TensorProto.INT64, [2], [1, n_in]),
            helper.make_tensor("W", TensorProto.FLOAT, [n_in, n_tags], weights.reshape(n_in, n_tags).ravel()),
            helper.make_tensor("b", TensorProto.FLOAT, [n_tags], bias),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(directory / "model.onnx"))
    with open(directory / "selected_tags.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category, _) in enumerate(TAGS):
            writer.writerow([1000 + i, name, category, 10])
    return directory


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> WD14Tagger:
    return WD14Tagger.from_dir(build_tagger_dir(tmp_path_factory.mktemp("tagger")))


def test_tags_by_threshold_and_channel_order(tagger: WD14Tagger) -> None:
    red = tagger.tags(Image.new("RGB", (32, 32), (255, 0, 0)))
    assert red == ["hero (series)", "red background", "^_^", "smile"]
    blue = tagger.tags(Image.new("RGB", (32, 32), (0, 0, 255)))
    assert "blue background" in blue and "red background" not in blue
    scores = tagger.score(Image.new("RGB", (32, 32), (255, 0, 0)))
    assert [n for n, _ in scores.ratings] == ["general", "explicit"]  # ratings never become tags
    assert dict(scores.general)["smile"] == pytest.approx(0.5)


def test_thresholds_and_exclusions(tagger: WD14Tagger) -> None:
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    assert "smile" not in tagger.tags(image, general_threshold=0.6)
    assert "villain" in tagger.tags(image, character_threshold=0.7)
    kept = tagger.tags(image, exclude=["red_background", "smile", " "])
    assert kept == ["hero (series)", "^_^"]


def test_input_is_bgr_white_padded_nhwc(tagger: WD14Tagger) -> None:
    x = tagger.prepare(Image.new("RGB", (16, 8), (255, 0, 0)))
    assert x.shape == (1, SIDE, SIDE, 3) and x.dtype == np.float32
    assert x[0, 0, 4].tolist() == [255.0, 255.0, 255.0]  # top rows: white padding
    assert x[0, 4, 4].tolist() == pytest.approx([0.0, 0.0, 255.0], abs=1)  # red as BGR
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert tagger.prepare(rgba)[0].min() == 255.0  # transparent pixels are flattened onto white


def test_tag_to_text() -> None:
    assert tag_to_text("long_hair") == "long hair"
    assert tag_to_text("^_^") == "^_^"


def test_missing_or_mismatched_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError):
        WD14Tagger.from_dir(tmp_path)
    d = build_tagger_dir(tmp_path / "t")
    with open(d / "selected_tags.csv", "a", encoding="utf-8") as fh:
        fh.write("9999,extra,0,1\n")
    with pytest.raises(ModelLoadError):
        WD14Tagger.from_dir(d)


def test_preprocess_with_tagger(tmp_path: Path) -> None:
    tagger_dir = build_tagger_dir(tmp_path / "tagger")
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(src / "r.png")
    (src / "r.txt").write_text("my caption", encoding="utf-8")
    result = preprocess_folder(
        src,
        tmp_path / "dst",
        PreprocessOptions(width=64, height=64, caption_action="prepend"),
        tagger=WD14Tagger.from_dir(tagger_dir),
    )
    assert [p.read_text(encoding="utf-8") for p in result.captions] == [
        "my caption, hero (series), red background, ^_^, smile"
    ]
    rc = main(
        [
            "preprocess",
            str(src),
            str(tmp_path / "cli"),
            "--width",
            "64",
            "--height",
            "64",
            "--tagger",
            str(tagger_dir),
            "--tag-action",
            "replace",
            "--exclude-tags",
            "smile,^_^",
        ]
    )
    assert rc == 0
    assert (tmp_path / "cli" / "00000-0-r.txt").read_text(encoding="utf-8") == "hero (series), red background"
