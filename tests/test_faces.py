"""The detector's fast memory layout (pipeline/faces.py DETECTOR_LAYOUT) finds the faces facenet-pytorch finds."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.extract import face_params
from pipeline.faces import FaceConfig, detect, load_detector
from pipeline.media import decode_frames, probe


def test_the_channels_last_detector_finds_the_boxes_of_facenets_own_layout(grid_dir):
    from facenet_pytorch import MTCNN

    video = str(sorted(grid_dir.glob("*.mpg"))[0])
    info = probe(video)
    frames = decode_frames(video, [0, 20, 40, 60], info.width, info.height)
    config = FaceConfig(detect_width=info.width)  # no downscale: both detectors see the same pixels
    boxes, probs = detect(frames, config)

    min_face = max(12, round(max(config.min_face, config.min_face_fraction * min(info.height, info.width))))
    detector = load_detector("cpu", min_face, config.thresholds)
    conv_weights = [p for net in (detector.pnet, detector.rnet, detector.onet) for p in net.parameters() if p.dim() == 4]
    assert conv_weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights)

    plain = MTCNN(keep_all=True, min_face_size=min_face, thresholds=list(config.thresholds), post_process=False)
    with torch.inference_mode():
        want_boxes, want_probs = plain.detect(frames)
    for got, want, p, q in zip(boxes, want_boxes, probs, want_probs):
        assert got.shape == np.asarray(want).shape == (1, 4)
        assert np.abs(got - want).max() < 0.01  # pixels: the layouts round differently, in the 5th decimal
        assert np.abs(p - q).max() < 1e-4


def test_the_layout_is_part_of_the_faces_fingerprint():
    assert face_params(FaceConfig())["detector_layout"].startswith("nets channels-last")
