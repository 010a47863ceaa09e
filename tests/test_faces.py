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
