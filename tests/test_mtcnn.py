"""avstore's MTCNN cascade (pipeline/mtcnn.py) finds the boxes facenet-pytorch's `MTCNN.detect` finds on real
faces, resamples exactly as torch's area interpolation does, and runs without importing torchvision."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from pipeline.faces import FaceConfig, detect
from pipeline.media import decode_frames, probe
from pipeline.mtcnn import area_resample, detect_faces, integral_images, load_nets, whole_frames_resampled
from tests.conftest import REPO


def grid_frames(grid_dir, clip: int, at: list[int]) -> np.ndarray:
    video = str(sorted(grid_dir.glob("*.mpg"))[clip])
    info = probe(video)
    return decode_frames(video, at, info.width, info.height)


def facenet_boxes(frames: np.ndarray, min_face: int, thresholds) -> list[tuple[np.ndarray, np.ndarray]]:
    from facenet_pytorch import MTCNN

    torch.set_num_threads(1)
    plain = MTCNN(keep_all=True, min_face_size=min_face, thresholds=list(thresholds), post_process=False)
    with torch.inference_mode():
        boxes, probs = plain.detect(frames)
    return [(np.zeros((0, 4)), np.zeros(0)) if b is None else (np.asarray(b), np.asarray(p, np.float64)) for b, p in zip(boxes, probs)]


def assert_same_detections(got: list, want: list) -> None:
    for (boxes, probs), (want_boxes, want_probs) in zip(got, want):
        assert boxes.shape == want_boxes.shape
        order, want_order = np.lexsort(boxes.T[::-1]), np.lexsort(want_boxes.T[::-1])
        assert np.abs(boxes[order] - want_boxes[want_order]).max(initial=0) < 0.01  # pixels: float rounding only
        assert np.abs(probs[order] - want_probs[want_order]).max(initial=0) < 1e-4


def test_the_cascade_finds_facenet_pytorchs_boxes_on_real_faces_one_and_two_per_frame(grid_dir):
    """GRID frames as they are, and two speakers' frames side by side (a crowd of two), at the full pyramid."""
    one = grid_frames(grid_dir, 0, [0, 20, 40, 60])
    two = np.concatenate([one[:2], grid_frames(grid_dir, 1, [10, 50])], axis=2)
    thresholds = FaceConfig().thresholds
    for frames in (one, two):
        got = detect_faces(frames, load_nets("cpu"), 40, thresholds)
        want = facenet_boxes(frames, 40, thresholds)
        assert_same_detections(got, want)
        assert all(len(boxes) == (1 if frames is one else 2) for boxes, _ in got)


def test_detect_downscales_and_returns_boxes_in_the_frames_pixels(grid_dir):
    frames = grid_frames(grid_dir, 0, [0, 30])
    config = FaceConfig(detect_width=180)
    boxes, probs = detect(frames, config)
    full, _ = detect(frames, FaceConfig(detect_width=frames.shape[2]))
    for small, large, p in zip(boxes, full, probs):
        assert small.shape == large.shape == (1, 4) and p.dtype == np.float32 and p[0] > 0.9
        assert np.abs(small - large).max() < 10  # the same face, located from a frame half the size


def test_a_frame_without_a_face_gives_empty_arrays_not_none():
    blank = np.full((2, 120, 160, 3), 128, np.uint8)
    for boxes, probs in detect_faces(blank, load_nets("cpu"), 20, (0.6, 0.7, 0.7)):
        assert boxes.shape == (0, 4) and probs.shape == (0,)


def test_area_resampling_equals_torchs_area_interpolation_down_and_up():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    windows = [(0, 0, 0, 53, 37, (24, 24)), (1, 5, 3, 50, 30, (24, 24)), (0, 10, 2, 17, 40 - 3, (48, 48)), (1, 0, 0, 53, 37, (19, 14))]
    for frame, x1, y1, x2, y2, size in windows:
        got = area_resample(integral_images(frames), *(np.array([v]) for v in (frame, x1, y1, x2, y2)), size)[0]
        window = torch.from_numpy(frames[frame, y1:y2, x1:x2].astype(np.float32)).permute(2, 0, 1)[None]
        want = torch.nn.functional.interpolate(window, size=(size[1], size[0]), mode="area")[0].permute(1, 2, 0).numpy()
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4
    for size in ((24, 17), (60, 80)):  # a pyramid level: every frame whole, down and up
        whole = torch.from_numpy(frames.astype(np.float32)).permute(0, 3, 1, 2)
        want = torch.nn.functional.interpolate(whole, size=(size[1], size[0]), mode="area").permute(0, 2, 3, 1).numpy()
        assert np.abs(whole_frames_resampled(integral_images(frames), size) - want).max() < 1e-4


def test_faces_are_detected_without_importing_torchvision(grid_dir):
    """Importing facenet-pytorch imports torchvision, ~3 CPU-s of every worker's start-up: extraction must not."""
    video = str(sorted(grid_dir.glob("*.mpg"))[0])
    code = (
        "import sys; from pipeline.faces import FaceConfig, detect; from pipeline.media import decode_frames, probe\n"
        f"info = probe({video!r}); frames = decode_frames({video!r}, [0], info.width, info.height)\n"
        "boxes, _ = detect(frames, FaceConfig()); assert len(boxes[0]) == 1, boxes\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'facenet_pytorch')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
