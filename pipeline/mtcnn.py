"""MTCNN's three-stage cascade (Zhang et al., 2016), written for a few small frames on one CPU thread, on the
trained nets that ship inside facenet-pytorch's wheel.

Why not `facenet_pytorch.MTCNN.detect`: it resamples every candidate box alone with torch's area
interpolation, ~90 calls per clip at ~0.25 ms each, which cost as much as its R-net and O-net together. Here
the pyramid and all candidates of a stage come out of each frame's integral image in one vectorised lookup.
And importing facenet-pytorch imports torchvision, whose ops load torch._dynamo: ~3 of a worker's ~6.5 CPU-s of
start-up. Here the nets are three small functions of the weight files, which are located, not imported, so
extraction never imports torchvision.

The rest is the paper's cascade with facenet-pytorch's settings: P-net over a scale pyramid, box regression,
squaring, R-net, O-net, non-maximum suppression between stages. The boxes equal facenet-pytorch's to within
float rounding (tests/test_mtcnn.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PYRAMID_FACTOR = 0.709  # each pyramid level is this much smaller than the one before (the paper's value)
CELL, STRIDE = 12, 2  # P-net sees 12x12 windows, 2 pixels apart
STAGE_NMS = (0.5, 0.7, 0.7, 0.7)  # IoU: within a P-net scale, across scales, after R-net; O-net's is intersection / smaller area


@dataclass(frozen=True)
class Net:
    """One of the three nets as its weights and its layer plan: convolutions, each followed by PReLU and maybe a
    max-pool (kernel, stride); for R- and O-net a dense layer; then the face-probability and box-offset heads."""

    weights: dict  # name -> tensor, as stored in facenet-pytorch's state dict
    convs: tuple[tuple[str, tuple[int, int] | None], ...]
    dense: str | None
    heads: tuple[str, str]  # face probability, box offsets

    def __call__(self, x):
        """(face probability, box offsets): (N,) and (N, 4) for R- and O-net; (N, h, w) and (N, 4, h, w) for P-net."""
        import torch.nn.functional as F

        w = self.weights
        for name, pool in self.convs:
            x = prelu(F.conv2d(x, w[f"{name}.weight"], w[f"{name}.bias"]), w, name)
            if pool:
                x = F.max_pool2d(x, pool[0], pool[1], ceil_mode=True)
        face, offsets = self.heads
        if self.dense is None:  # P-net is fully convolutional: one answer per 12x12 window
            logits = F.conv2d(x, w[f"{face}.weight"], w[f"{face}.bias"])
            return F.softmax(logits, dim=1)[:, 1], F.conv2d(x, w[f"{offsets}.weight"], w[f"{offsets}.bias"])
        x = x.permute(0, 3, 2, 1).reshape(len(x), -1)  # the published weights flatten width first
        x = prelu(F.linear(x, w[f"{self.dense}.weight"], w[f"{self.dense}.bias"]), w, self.dense)
        logits = F.linear(x, w[f"{face}.weight"], w[f"{face}.bias"])
        return F.softmax(logits, dim=1)[:, 1], F.linear(x, w[f"{offsets}.weight"], w[f"{offsets}.bias"])


def prelu(x, weights: dict, layer: str):
    import torch.nn.functional as F

    return F.prelu(x, weights["prelu" + layer.removeprefix("conv").removeprefix("dense") + ".weight"])


PLANS = {
    "pnet": ((("conv1", (2, 2)), ("conv2", None), ("conv3", None)), None, ("conv4_1", "conv4_2")),
    "rnet": ((("conv1", (3, 2)), ("conv2", (3, 2)), ("conv3", None)), "dense4", ("dense5_1", "dense5_2")),
    "onet": ((("conv1", (3, 2)), ("conv2", (3, 2)), ("conv3", (2, 2)), ("conv4", None)), "dense5", ("dense6_1", "dense6_2")),
}


def weights_dir() -> Path:
    """facenet-pytorch's folder of trained MTCNN weights, located without importing the package (which would
    import torchvision)."""
    import importlib.util

    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("facenet-pytorch is not installed: run `make setup` (it ships MTCNN's weights)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.lru_cache(maxsize=2)
def load_nets(device: str = "cpu") -> tuple[Net, Net, Net]:
    """P-, R- and O-net, loaded once per process and device. Convolution weights are channels-last: on CPU,
    PyTorch's max-pooling of a contiguous (NCHW) tensor is ~4x slower than of a channels-last one."""
    import torch

    nets = []
    for name, (convs, dense, heads) in PLANS.items():
        weights = torch.load(weights_dir() / f"{name}.pt", map_location=device, weights_only=True)
        weights = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in weights.items()}
        nets.append(Net(weights, convs, dense, heads))
    return tuple(nets)


def detect_faces(frames: np.ndarray, nets: tuple[Net, Net, Net], min_face: float,
                 thresholds: tuple[float, float, float]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes (n, 4) as x1, y1, x2, y2, probabilities (n,)) for each of the (N, H, W, 3) uint8 RGB frames.

    `min_face` is the smallest face looked for, in pixels; `thresholds` are each stage's face probability."""
    import torch

    pnet, rnet, onet = nets
    integral = integral_images(frames)
    with torch.no_grad():
        boxes, frame_of = propose(integral, pnet, min_face, thresholds[0])
        boxes, frame_of = refine(integral, boxes, frame_of, rnet, 24, thresholds[1], final=False)
        boxes, frame_of = refine(integral, boxes, frame_of, onet, 48, thresholds[2], final=True)
    return [(boxes[frame_of == i, :4], boxes[frame_of == i, 4]) for i in range(len(frames))]


def pyramid_scales(height: int, width: int, min_face: float) -> list[float]:
    """Scales at which P-net's 12-pixel window covers faces from `min_face` up to the whole frame."""
    scale, side, scales = 12.0 / min_face, min(height, width) * 12.0 / min_face, []
    while side >= CELL:
        scales.append(scale)
        scale, side = scale * PYRAMID_FACTOR, side * PYRAMID_FACTOR
    return scales


def propose(integral: np.ndarray, pnet: Net, min_face: float, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1: P-net on every pyramid level, all frames in one batch per level. Returns square candidate boxes
    (n, 5: x1, y1, x2, y2, score) and the frame each belongs to."""
    height, width = integral.shape[1] - 1, integral.shape[2] - 1
    found, frame_of = [], []
    for scale in pyramid_scales(height, width, min_face):
        level = whole_frames_resampled(integral, (int(width * scale + 1), int(height * scale + 1)))
        face, offsets = run(pnet, level)
        frame, row, col = np.nonzero(face >= threshold)
        corner = np.stack([col, row], axis=1).astype(np.float32)
        boxes = np.concatenate([
            np.floor((STRIDE * corner + 1) / scale),
            np.floor((STRIDE * corner + CELL) / scale),
            face[frame, row, col][:, None],
            offsets[frame, :, row, col],
        ], axis=1)
        keep = nms(boxes, frame, STAGE_NMS[0])
        found.append(boxes[keep])
        frame_of.append(frame[keep])
    boxes, frame_of = np.concatenate(found or [np.zeros((0, 9), np.float32)]), np.concatenate(frame_of or [np.zeros(0, np.int64)])
    keep = nms(boxes, frame_of, STAGE_NMS[1])
    boxes, frame_of = boxes[keep], frame_of[keep]
    side = boxes[:, 2:4] - boxes[:, 0:2]
    moved = boxes[:, :4] + boxes[:, 5:9] * np.concatenate([side, side], axis=1)
    return squared(np.concatenate([moved, boxes[:, 4:5]], axis=1)), frame_of


def refine(integral: np.ndarray, boxes: np.ndarray, frame_of: np.ndarray, net: Net, size: int, threshold: float,
           final: bool) -> tuple[np.ndarray, np.ndarray]:
    """Stages 2 and 3: the net scores each candidate resampled to size x size and moves its box. Between stages the
    kept boxes are suppressed by IoU and squared; the final boxes by intersection over the smaller box."""
    x1, y1, x2, y2 = window(boxes, integral.shape[2] - 1, integral.shape[1] - 1)
    valid = (x2 > x1) & (y2 > y1)
    boxes, frame_of = boxes[valid], frame_of[valid]
    if len(boxes) == 0:
        return boxes, frame_of
    score, offsets = run(net, area_resample(integral, frame_of, x1[valid], y1[valid], x2[valid], y2[valid], (size, size)))
    sure = score > threshold
    boxes = np.concatenate([boxes[sure, :4], score[sure, None]], axis=1)
    frame_of, offsets = frame_of[sure], offsets[sure]
    if not final:
        keep = nms(boxes, frame_of, STAGE_NMS[2])
        return squared(regressed(boxes[keep], offsets[keep])), frame_of[keep]
    boxes = regressed(boxes, offsets)
    keep = nms(boxes, frame_of, STAGE_NMS[3], over_smaller=True)
    return boxes[keep], frame_of[keep]


def run(net: Net, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The net on (N, H, W, 3) float pixels, scaled as it was trained (about [-1, 1]), handed over NCHW with
    channels-last memory like its weights; the answers as numpy arrays."""
    import torch

    device = next(iter(net.weights.values())).device
    x = torch.from_numpy((images - 127.5) * 0.0078125).permute(0, 3, 1, 2).to(device)
    face, offsets = net(x)
    return face.cpu().numpy(), offsets.cpu().numpy()


def window(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, ...]:
    """The pixel window each candidate is read from: its box truncated to integers and clipped to the frame
    (the cascade's convention: a box's corners are 1-based pixel positions, its far edges inclusive)."""
    corners = np.trunc(boxes[:, :4]).astype(np.int64)
    x1 = np.maximum(corners[:, 0], 1) - 1
    y1 = np.maximum(corners[:, 1], 1) - 1
    return x1, y1, np.minimum(corners[:, 2], width), np.minimum(corners[:, 3], height)


def regressed(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Boxes moved by a net's offsets, given as fractions of the box's inclusive width and height."""
    side = boxes[:, 2:4] - boxes[:, 0:2] + 1
    moved = boxes.copy()
    moved[:, :4] += offsets[:, :4] * np.concatenate([side, side], axis=1)
    return moved


def squared(boxes: np.ndarray) -> np.ndarray:
    """Each box made square around its centre, its side the longer one (the next net sees square patches)."""
    out = boxes.copy()
    side = (boxes[:, 2:4] - boxes[:, 0:2]).max(axis=1)
    out[:, 0:2] = (boxes[:, 0:2] + boxes[:, 2:4]) / 2 - side[:, None] / 2
    out[:, 2:4] = out[:, 0:2] + side[:, None]
    return out


def nms(boxes: np.ndarray, frame_of: np.ndarray, threshold: float, over_smaller: bool = False) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression within each frame, best score first: a box is
    dropped when it overlaps a better one of its frame by more than `threshold`, as IoU (between stages, pixel
    edges exclusive) or as intersection over the smaller box (the final boxes, edges inclusive)."""
    order = np.argsort(-boxes[:, 4], kind="stable")
    b, pad = boxes[order], 1.0 if over_smaller else 0.0
    area = (b[:, 2] - b[:, 0] + pad) * (b[:, 3] - b[:, 1] + pad)
    w = np.maximum(0, np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]) + pad)
    h = np.maximum(0, np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]) + pad)
    with np.errstate(divide="ignore", invalid="ignore"):
        overlap = w * h / (np.minimum(area[:, None], area[None, :]) if over_smaller else area[:, None] + area[None, :] - w * h)
    suppresses = (overlap > threshold) & (frame_of[order][:, None] == frame_of[order][None, :])
    dropped = np.zeros(len(b), bool)
    keep = []
    for i in range(len(b)):
        if not dropped[i]:
            keep.append(i)
            dropped |= suppresses[i]
    return np.sort(order[keep])


def integral_images(frames: np.ndarray) -> np.ndarray:
    """(N, H + 1, W + 1, 3) int32 sums of all pixels above and left of each position, so that any rectangle's
    sum takes four lookups."""
    import cv2

    return np.stack([cv2.integral(frame, sdepth=cv2.CV_32S) for frame in frames])


def area_resample(integral: np.ndarray, frame_of: np.ndarray, x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray,
                  size: tuple[int, int]) -> np.ndarray:
    """(n, height, width, 3) float32: window [y1, y2) x [x1, x2) of frame `frame_of` for each of n windows,
    resampled to size = (width, height) by area interpolation, all in one vectorised lookup.

    Output pixel i averages input pixels floor(i n_in / n_out) up to ceil((i + 1) n_in / n_out): torch's
    `interpolate(mode="area")`, the resampling MTCNN's published nets were run with."""
    frames, rows, columns = integral.shape[:3]
    flat = integral.reshape(-1, 3)
    top, bottom = area_edges(y1, y2, size[1])
    left, right = area_edges(x1, x2, size[0])
    first = frame_of[:, None, None] * rows
    at = lambda r, c: np.take(flat, ((first + r[:, :, None]) * columns + c[:, None, :]).ravel(), axis=0)  # noqa: E731
    sums = at(bottom, right) - at(top, right) - at(bottom, left) + at(top, left)
    area = ((bottom - top)[:, :, None] * (right - left)[:, None, :]).reshape(-1, 1)
    return (sums / area).astype(np.float32).reshape(len(frame_of), size[1], size[0], 3)


def whole_frames_resampled(integral: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Every frame whole, as area_resample gives it, for a pyramid level: the windows are the same for all frames,
    so the sums are taken a band of rows, then a band of columns, at a time (two gathers of whole rows and columns
    instead of four of single pixels: ~3x faster)."""
    height, width = integral.shape[1] - 1, integral.shape[2] - 1
    top, bottom = (edge[0] for edge in area_edges(np.zeros(1, np.int64), np.full(1, height), size[1]))
    left, right = (edge[0] for edge in area_edges(np.zeros(1, np.int64), np.full(1, width), size[0]))
    bands = np.take(integral, bottom, axis=1) - np.take(integral, top, axis=1)
    sums = np.take(bands, right, axis=2) - np.take(bands, left, axis=2)
    area = (bottom - top)[:, None] * (right - left)[None, :]
    return (sums / area[None, :, :, None]).astype(np.float32)


def area_edges(start: np.ndarray, stop: np.ndarray, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, n_out) first and one-past-last input index that each output pixel of each window [start, stop) averages."""
    i, n_in = np.arange(n_out)[None, :], (stop - start)[:, None]
    return start[:, None] + i * n_in // n_out, start[:, None] - (-(i + 1) * n_in // n_out)
