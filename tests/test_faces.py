"""The middle frame is a key frame in its place among the steps (pipeline/faces.py KEY_SCHEDULE); the detector
itself is tested in test_mtcnn.py."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.extract import face_params
from pipeline.extract import clip_timeline
from pipeline.faces import FaceConfig, confirmed_steps, track_faces
from pipeline.media import decode_frames, probe
from stores.fingerprint import fingerprint


@pytest.mark.parametrize("name", ["CASCADE", "KEY_SCHEDULE"])
def test_a_new_cascade_or_key_schedule_gives_the_faces_a_new_fingerprint(monkeypatch, name):
    """Each names, by hand, code that moves the boxes (pipeline/faces.py): when it is changed, a store's crops made
    by the old code must be re-detected, not reused, so the faces fingerprint must follow it."""
    import pipeline.extract
    import pipeline.faces

    before = fingerprint(face_params(FaceConfig()))
    assert fingerprint(face_params(FaceConfig())) == before  # otherwise any change would pass
    changed = getattr(pipeline.faces, name) + " (changed)"
    for module in (pipeline.faces, pipeline.extract):  # wherever face_params reads it from
        monkeypatch.setattr(module, name, changed)
    assert fingerprint(face_params(FaceConfig())) != before


def step_and_middle_frames(grid_dir, steps: int) -> np.ndarray:
    """The T step frames and the middle frame of the first GRID clip, as extract_faces decodes them."""
    video = str(sorted(grid_dir.glob("*.mpg"))[0])
    info = probe(video)
    timeline = clip_timeline(info, steps)
    return decode_frames(video, [*timeline.frame_index.tolist(), timeline.middle_index], info.width, info.height)


def test_the_middle_frame_is_a_key_between_the_two_steps_beside_it(grid_dir):
    """The first pass detects on the first and last steps and the middle frame (3 frames, not 4), and the middle
    frame's box is a key halfway between steps 7 and 8 (T=16): step 7's box lies on the line from the key before
    it to the middle frame's. Before, the middle frame was a fourth detection whose box only the middle crop used."""
    frames = step_and_middle_frames(grid_dir, 16)
    track = track_faces(frames[:-1], frames[-1], FaceConfig(size=64))
    assert track is not None and track.found.all()
    assert {0, 7.5, 15} <= set(track.keys) and set(track.keys) <= {0, 4, 7.5, 8, 12, 15}  # in doubt: every 4th step too
    before = max(k for k in track.keys if k <= 7)
    on_the_line = track.boxes[before] + (7 - before) / (7.5 - before) * (track.middle_box - track.boxes[before])
    assert np.abs(track.boxes[7] - on_the_line).max() < 1e-3


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_a_few_steps_keep_their_first_and_last_key_beside_the_middle_frame(grid_dir, steps):
    """T=2: the middle frame lies within a step of both steps; it must not stand in for them (every crop was
    then unconfirmed and the clip `face_lost`)."""
    frames = step_and_middle_frames(grid_dir, steps)
    track = track_faces(frames[:-1], frames[-1], FaceConfig(frames=steps, size=32))
    assert track is not None and track.found.all() and {0, steps - 1} <= set(track.keys)


def test_steps_between_two_sightings_are_confirmed_across_a_key_that_lies_between_steps():
    assert confirmed_steps([0, 7.5, 15], np.array([True, True, True]), 16).all()
    assert confirmed_steps([0, 7.5, 15], np.array([True, True, False]), 16).tolist() == [True] * 8 + [False] * 8
    assert confirmed_steps([0, 7.5, 15], np.array([True, False, True]), 16).tolist() == [True] + [False] * 14 + [True]


# ---- video from the wild: movement, cuts, several faces (issue 23) -------------------------------------------
# Variants of a real GRID clip made with ffmpeg (640x360, 3 s, 25 fps), each reproducing a way the first key frame's
# face, followed by position alone, was lost while a face was visible. An independent detector is the oracle:
# facenet-pytorch's own `MTCNN.detect` on every step frame (tests/test_mtcnn.py).
WILD = FaceConfig(size=48)
WILD_FILTERS = {
    "moving": "color=gray:s=640x360:r=25[bg];[bg][0:v]overlay=x='t*93':y=36:shortest=1",
    "framings": "[0:v]split[a][b];[a]pad=640:360:140:36:gray[wide];[b]crop=240:240:32:57,scale=360:360,pad=640:360:0:0:0x202040[close];"
                "[wide][close]overlay=enable='gte(t,1.5)'",
    "cutaway": "[0:v]split[a][b];[a]pad=640:360:140:36:gray[wide];[b]crop=90:90:0:0,scale=640:360[wall];[wide][wall]overlay=enable='between(t,1.3,1.7)'",
    "leaves": "color=gray:s=640x360:r=25[bg];[1:v]scale=216:173[small];[bg][small]overlay=x=20:y=100:shortest=1[s];"
              "[s][0:v]overlay=x='if(lt(t,1.2),280,280+(t-1.2)*1500)':y=36:shortest=1",
}
"""moving: the face crosses 280 px of the frame in 3 s. framings: a hard cut at 1.5 s from a wide shot to a close-up
on the left. cutaway: a faceless shot (the studio wall, enlarged) from 1.3 to 1.7 s. leaves: a smaller second face on
the left; the larger one slides out to the right after 1.2 s."""


@pytest.fixture(scope="session")
def wild_clips(grid_dir, tmp_path_factory) -> dict[str, str]:
    from tests.test_truth import ffmpeg

    out = tmp_path_factory.mktemp("wild")
    a, b = (str(grid_dir / name) for name in ("bbaf2n.mpg", "lbax4n.mpg"))
    made = {}
    for name, graph in WILD_FILTERS.items():
        made[name] = str(out / f"{name}.mp4")
        ffmpeg("-i", a, *(["-i", b] if "[1:v]" in graph else []), "-filter_complex", graph, "-c:v", "mpeg4", "-q:v", "3", "-an", "-t", "3", made[name])
    return made


def extract_wild(video: str, config: FaceConfig = WILD):
    """extract_faces' result, and the oracle's confident boxes at each of its step frames."""
    from pipeline.extract import extract_faces
    from pipeline.records import ClipRecord
    from tests.test_mtcnn import facenet_boxes

    result = extract_faces(ClipRecord(clip_id="wild", video_path=video, label=0, emotion="ANG", speaker="1"), config, max_duration=10)
    info = probe(video)
    frames = decode_frames(video, clip_timeline(info, config.frames).frame_index.tolist(), info.width, info.height)
    oracle = [boxes[probs >= config.min_prob] for boxes, probs in facenet_boxes(frames, 40, config.thresholds)]
    return result, oracle


def best_overlap(box: np.ndarray, oracle: np.ndarray) -> float:
    """The largest IoU of `box` with the oracle's boxes (0 with none)."""
    x1, y1 = np.maximum(box[0], oracle[:, 0]), np.maximum(box[1], oracle[:, 1])
    x2, y2 = np.minimum(box[2], oracle[:, 2]), np.minimum(box[3], oracle[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = (box[2] - box[0]) * (box[3] - box[1]) + (oracle[:, 2] - oracle[:, 0]) * (oracle[:, 3] - oracle[:, 1]) - inter
    return float((inter / union).max(initial=0.0))


def assert_every_visible_face_is_followed(result, oracle) -> None:
    """Each step where the oracle sees a face is `found`, its box on one of the oracle's faces; each step where it
    sees none is not, its crop zeros and its box NaN."""
    arrays = result.arrays
    visible = np.array([len(o) > 0 for o in oracle])
    assert arrays["found"].tolist() == visible.tolist(), (arrays["found"], visible)
    for k in np.flatnonzero(visible):
        assert best_overlap(arrays["boxes"][k], oracle[k]) >= 0.5, (k, arrays["boxes"][k], oracle[k])
    assert not arrays["crops"][~visible].any() and np.isnan(arrays["boxes"][~visible]).all()
    assert float(arrays["coverage"]) == pytest.approx(visible.mean())


def test_a_face_that_moves_across_the_frame_is_followed_at_every_step(wild_clips):
    """Before: the first key frame's box was held where the face had been (coverage 0.06, `face_lost`)."""
    result, oracle = extract_wild(wild_clips["moving"])
    assert result.status == "ok", result.reason
    assert all(len(o) == 1 for o in oracle)
    assert_every_visible_face_is_followed(result, oracle)


def test_a_hard_cut_between_two_framings_of_one_face_is_seen_and_the_face_found_again(wild_clips):
    result, oracle = extract_wild(wild_clips["framings"])
    assert result.status == "ok" and "2 shots" in result.reason, result.reason
    assert_every_visible_face_is_followed(result, oracle)
    centres = (result.arrays["boxes"][:, 0] + result.arrays["boxes"][:, 2]) / 2
    assert (centres[:7] > 240).all() and (centres[9:] < 240).all()  # the wide shot's face, then the close-up's on the left


def test_a_cut_away_to_a_faceless_shot_is_marked_not_cropped_and_the_clip_stays_ok(wild_clips):
    """Two of 16 steps show the wall: they are not `found` and their crops are zeros, every other step holds the
    face (before: the steps around the cut-away were unconfirmed, coverage 0.56, and the wall was cropped)."""
    result, oracle = extract_wild(wild_clips["cutaway"])
    assert sum(len(o) == 0 for o in oracle) == 2
    assert result.status == "ok", result.reason
    assert_every_visible_face_is_followed(result, oracle)
    assert result.arrays["middle"].any()  # the middle frame shows the wall: the nearest step's face stands in


@pytest.mark.parametrize("policy", ["largest", "steady"])
def test_when_the_larger_of_two_faces_leaves_the_policy_picks_who_is_followed(wild_clips, policy):
    """`largest` follows the larger face on the right, then the one left on the left once it is gone; `steady` the
    one that stays put throughout. Before, the larger one's last box was held over an empty background."""
    import dataclasses

    result, oracle = extract_wild(wild_clips["leaves"], WILD if policy == "largest" else dataclasses.replace(WILD, policy=policy))
    assert result.status == "ok", result.reason
    assert_every_visible_face_is_followed(result, oracle)
    centres = (result.arrays["boxes"][:, 0] + result.arrays["boxes"][:, 2]) / 2
    assert (centres[-5:] < 240).all()
    assert (centres[0] > 240) == (policy == "largest") and ("re-acquired" in result.reason) == (policy == "largest")


def test_the_face_policy_and_the_tracking_are_part_of_the_faces_fingerprint_and_checked():
    from pipeline.extract import face_params
    from stores.fingerprint import fingerprint

    params = face_params(FaceConfig())
    assert params["policy"] == "largest" and params["tracking"].startswith("shots")
    assert fingerprint(face_params(FaceConfig(policy="steady"))) != fingerprint(params)
    with pytest.raises(ValueError, match="unknown face policy 'biggest'; choose one of largest, central, steady"):
        track_faces(np.zeros((2, 32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.uint8), FaceConfig(policy="biggest"))


def test_studio_clips_keep_the_first_pass_alone_one_shot_and_every_step_found(grid_dir):
    """The speed path: a talking head is done with its first 3 detections, and no shot change is seen in it."""
    from pipeline.tracking import shot_of_steps

    for clip in range(3):
        video = str(sorted(grid_dir.glob("*.mpg"))[clip])
        info = probe(video)
        timeline = clip_timeline(info, 16)
        frames = decode_frames(video, [*timeline.frame_index.tolist(), timeline.middle_index], info.width, info.height)
        assert shot_of_steps(frames[:-1])[0].max() == 0
        track = track_faces(frames[:-1], frames[-1], FaceConfig(size=32))
        assert track is not None and track.found.all() and track.shots == 1 and track.reacquired == 0
        assert len(track.keys) <= 6  # the first pass, or every 4th step when in doubt; never every step


def test_the_dataset_gives_models_the_per_step_face_mask(tmp_path):
    """`found` is stored beside the crops and read by the training dataset for any split positions."""
    from pipeline.extract import face_arrays
    from pipeline.records import ClipRecord
    from stores.store import FeatureStore
    from stores.torchdata import StoreSplit, recipe_for

    config = FaceConfig(frames=4, size=32)
    store = FeatureStore.create(tmp_path / "s.zarr", dataset="manifest", class_names=["ANG"], split_seed=0)
    rows = store.add_clips([ClipRecord(clip_id=f"c{k}", video_path=f"c{k}.mp4", label=0, emotion="ANG", speaker="1") for k in range(3)])
    faces = store.ensure_feature_set("faces", {"stage": "faces", "test": 1}, face_arrays(config), {})
    found = np.array([[1, 1, 1, 1], [1, 0, 0, 1], [0, 1, 1, 1]], bool)
    store.write_rows(faces, rows, {"found": found}, ["ok"] * 3, [""] * 3)
    split = StoreSplit(str(tmp_path / "s.zarr"), {"faces": faces.name}, recipe_for("video", "vision", "none"), np.array([2, 1]),
                       np.zeros(2), in_memory=False)
    assert split.face_mask().tolist() == found[[2, 1]].tolist()
    assert split.face_mask(np.array([1])).tolist() == [found[1].tolist()]


def test_cli_extract_refuses_an_unknown_face_policy_in_one_line(tmp_path):
    from tests.conftest import run_cli

    result = run_cli("extract", "--dataset", "manifest", "--root", str(tmp_path / "none.csv"), "--store", str(tmp_path / "s.zarr"), "--face-policy", "biggest")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--face-policy 'biggest'" in result.stderr and "largest, central, steady" in result.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_scene_stores_each_steps_whole_frame_letterboxed_beside_the_crops(wild_clips, tmp_path):
    """`--scene`: the shot around the face, aspect kept (640x360 -> 48x27 between black bars), in the fingerprint."""
    import dataclasses

    from pipeline.extract import face_params
    from pipeline.faces import letterbox
    from pipeline.records import ClipRecord
    from pipeline.run import ExtractConfig, run_extract
    from stores.fingerprint import fingerprint
    from stores.store import FeatureStore

    config = dataclasses.replace(WILD, scene=True)
    assert fingerprint(face_params(config)) != fingerprint(face_params(WILD))
    video = wild_clips["framings"]
    record = ClipRecord(clip_id="framings", video_path=video, label=0, emotion="ANG", speaker="1")
    run_extract([record], str(tmp_path / "s.zarr"), ExtractConfig(faces=config, fusions=()), dataset="manifest", class_names=["ANG"],
                workers=0, progress=False)
    faces = FeatureStore.open(tmp_path / "s.zarr").feature_sets("faces")[0]
    scene = faces["scene"][0]
    info = probe(video)
    frames = decode_frames(video, clip_timeline(info, config.frames).frame_index.tolist(), info.width, info.height)
    assert scene.shape == (16, 48, 48, 3) and faces.ok().all()
    assert np.array_equal(scene, np.stack([letterbox(f, 48) for f in frames]))
    assert not scene[:, :10].any() and not scene[:, -10:].any() and scene[:, 11:37].std() > 5  # bars, then the picture
