"""The ``3dae-scenes`` dataparser: scene ids, selection, splits, single scenes and every kind of bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ring_poses, write_tiny_scene
from PIL import Image

from nerfstudio_3dae.data.dataparser import SCENE_ID, ScenesDataParserConfig, parse_scene_selection
from nerfstudio_3dae.data.layout import DatasetError, project_points, read_scene


def parse(root: Path, split: str = "train", **kwargs):
    return ScenesDataParserConfig(data=root, **kwargs).setup().get_dataparser_outputs(split)


def test_three_scenes_carry_their_ids(tiny_dataset):
    root = tiny_dataset(num_scenes=3, views=8)
    train, test = parse(root, "train", test_every=4), parse(root, "test", test_every=4)
    assert train.metadata["num_scenes"] == 3
    assert train.metadata["scene_names"] == ["obj_000", "obj_001", "obj_002"]
    ids = train.cameras.metadata[SCENE_ID]
    assert ids.shape == (18, 1) and ids.dtype == torch.long
    assert ids.squeeze(1).tolist() == [0] * 6 + [1] * 6 + [2] * 6
    # views 4 and 8 of each scene (1-based) are held out
    assert test.cameras.metadata[SCENE_ID].squeeze(1).tolist() == [0, 0, 1, 1, 2, 2]
    assert test.image_filenames[0].name == "0003.png"
    assert torch.equal(train.scene_box.aabb, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    # a camera indexed out of the batch keeps its scene id
    assert train.cameras[7].metadata[SCENE_ID].item() == 1


def test_selection_gives_local_ids(tiny_dataset):
    root = tiny_dataset(num_scenes=4)
    out = parse(root, scenes="3,1")
    assert out.metadata["scene_names"] == ["obj_003", "obj_001"]
    assert out.metadata["scene_indices"] == [3, 1]
    assert sorted(set(out.cameras.metadata[SCENE_ID].squeeze(1).tolist())) == [0, 1]
    assert parse_scene_selection("0:2,3", 4) == [0, 1, 3]
    assert parse_scene_selection("2:", 4) == [2, 3]
    assert parse_scene_selection(":", 4) == [0, 1, 2, 3]


@pytest.mark.parametrize("spec", ["0:5", "4", "-1", "2:2", "a", "0,0", "1,"])
def test_bad_selection_names_the_option(tiny_dataset, spec):
    root = tiny_dataset(num_scenes=4)
    with pytest.raises(DatasetError, match="--scenes"):
        parse(root, scenes=spec)


@pytest.mark.parametrize(
    "spec, says",
    [
        ("5:9", "range '5:9' is out of bounds: the dataset has 3 scenes (indices 0..2)"),
        ("0:4", "range '0:4' is out of bounds: the dataset has 3 scenes"),
        ("3:", "range '3:' is out of bounds"),
        ("-1:2", "range '-1:2' is out of bounds"),
        ("2:1", "range '2:1' is empty"),
        ("7", "scene 7 is out of bounds: the dataset has 3 scenes"),
        ("1:x", "'1:x' is not an index or a start:stop range"),
        ("one", "'one' is not an index or a start:stop range"),
    ],
)
def test_a_bad_selection_says_what_is_wrong(spec, says):
    with pytest.raises(DatasetError) as error:
        parse_scene_selection(spec, 3)
    assert says in str(error.value) and str(error.value).startswith(f"--scenes {spec!r}: ")


def test_an_out_of_bounds_range_through_the_dataparser(tiny_dataset):
    with pytest.raises(DatasetError, match=r"--scenes .*'5:9': range '5:9' is out of bounds: the dataset has 3 scenes"):
        parse(tiny_dataset(num_scenes=3), scenes="5:9")


def test_splits_given_in_the_scene(tmp_path):
    write_tiny_scene(tmp_path / "s", views=4, splits=["test", "train", None, "train"])
    train, test = parse(tmp_path / "s", "train"), parse(tmp_path / "s", "test")
    assert [p.name for p in train.image_filenames] == ["0001.png", "0002.png", "0003.png"]
    assert [p.name for p in test.image_filenames] == ["0000.png"]
    assert train.metadata["scene_names"] == ["."]  # a plain scene folder is a one-scene dataset


def test_blender_scene_with_split_files_and_fov(tmp_path):
    scene = tmp_path / "lego"
    (scene / "train").mkdir(parents=True)
    (scene / "test").mkdir()
    poses = ring_poses(3)
    for split, idx in (("train", [0, 1]), ("test", [2])):
        frames = []
        for i in idx:
            Image.new("RGB", (24, 16), (255, 0, 0)).save(scene / split / f"r_{i}.png")
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": poses[i].tolist()})
        (scene / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.8, "frames": frames}))
    out = parse(scene, "train")
    assert len(out.image_filenames) == 2
    assert out.cameras.width[0].item() == 24 and out.cameras.height[0].item() == 16
    assert out.cameras.fx[0].item() == pytest.approx(12 / math.tan(0.4))
    assert len(parse(scene, "test").image_filenames) == 1


def test_cameras_match_the_pinhole_projection(tiny_dataset):
    """nerfstudio's rays through the pixel where a 3D point projects pass through that point."""
    root = tiny_dataset(num_scenes=1, views=4, size=32)
    cameras = parse(root).cameras
    scene = read_scene(root, "obj_000")
    point = np.array([[0.2, -0.1, 0.3]])
    for i, view in enumerate(scene.views[:3]):
        uv, depth = project_points(point, view.camera_to_world, view.intrinsics)
        assert depth[0] > 0
        coords = torch.tensor([[uv[0, 1], uv[0, 0]]], dtype=torch.float32)  # nerfstudio wants (row, col)
        rays = cameras.generate_rays(camera_indices=i, coords=coords)
        to_point = torch.tensor(point, dtype=torch.float32) - rays.origins
        along = (to_point * rays.directions).sum(-1, keepdim=True)
        assert torch.linalg.norm(to_point - along * rays.directions) < 1e-4


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_transforms(tiny_dataset):
    root = tiny_dataset(num_scenes=2)
    (root / "obj_001" / "transforms.json").unlink()
    with pytest.raises(DatasetError, match=r"obj_001.*transforms\.json is missing"):
        parse(root)


def test_scenes_json_entry_without_folder(tiny_dataset):
    root = tiny_dataset(num_scenes=2)
    (root / "scenes.json").write_text(json.dumps(["obj_000", "obj_001", "ghost"]))
    with pytest.raises(DatasetError, match=r"scenes\.json lists scene 'ghost'.*does not exist"):
        parse(root)


def test_duplicate_scene_names(tiny_dataset):
    root = tiny_dataset(num_scenes=2)
    (root / "scenes.json").write_text(json.dumps(["obj_000", "obj_001", "obj_000"]))
    with pytest.raises(DatasetError, match="'obj_000' appears twice"):
        parse(root)


def test_listed_image_absent_reported_at_parse_time(tiny_dataset):
    root = tiny_dataset(num_scenes=2)
    (root / "obj_001" / "images" / "0002.png").unlink()
    with pytest.raises(DatasetError, match=r"frame 2: image .*obj_001/images/0002\.png is listed but does not exist"):
        parse(root, check_image_headers=False)


def test_unreadable_image(tiny_dataset):
    root = tiny_dataset(num_scenes=2)
    (root / "obj_000" / "images" / "0001.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"obj_000/images/0001\.png cannot be read"):
        parse(root)


def test_images_of_different_sizes(tiny_dataset):
    root = tiny_dataset(num_scenes=2, size=16)
    write_tiny_scene(root / "obj_001", size=24)
    with pytest.raises(DatasetError, match=r"different sizes.*obj_001.* is 24x24 but .*obj_000.* is 16x16"):
        parse(root)


def test_size_not_divisible_by_the_autoencoder_factor(tiny_dataset):
    root = tiny_dataset(num_scenes=1, size=20)
    with pytest.raises(DatasetError, match=r"obj_000/images/0000\.png is 20x20.*factor of 8"):
        parse(root)
    assert len(parse(root, image_multiple=4).image_filenames) == 4


def test_scene_with_no_views(tiny_dataset):
    root = tiny_dataset(num_scenes=2)
    (root / "obj_001" / "transforms.json").write_text(
        json.dumps({"fl_x": 1, "cx": 1, "cy": 1, "w": 16, "h": 16, "frames": []})
    )
    with pytest.raises(DatasetError, match=r"scene 'obj_001'.*lists no frames"):
        parse(root)


def test_scene_with_only_test_views(tmp_path):
    write_tiny_scene(tmp_path / "s", views=2, splits=["test", "test"])
    with pytest.raises(DatasetError, match="no training view"):
        parse(tmp_path / "s")


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="neither scenes.json"):
        parse(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        parse(tmp_path / "nowhere")


def test_registered_with_nerfstudio():
    from nerfstudio.plugins.registry_dataparser import discover_dataparsers

    configs, descriptions = discover_dataparsers()
    assert isinstance(configs["3dae-scenes"], ScenesDataParserConfig)
    assert "scenes" in descriptions["3dae-scenes"]
