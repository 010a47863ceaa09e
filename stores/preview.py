"""A store you can look at: a PNG contact sheet of clips, their face crops beside their spectrogram chunks.

Why: a status and a number say a clip is fine; a glance at its crops says whether they are faces. The sheet
puts the clips most likely to be wrong first (not ok, then lowest face coverage), so a new corpus is checked
in seconds. It reads with plain `zarr` through the store's location (a folder or an fsspec URL), writes only
the PNG, and so works on a published, read-only or remote store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import zarr

from stores.location import locate, reading
from stores.store import FeatureStore

LABEL_HEIGHT = 16
MIN_CELL = 96  # small stores (size 48) are enlarged so the crops can be seen


@dataclass(frozen=True)
class PreviewClip:
    row: int
    clip_id: str
    status: str  # faces status, or "faces/audio" statuses when they differ
    coverage: float
    split: str


def pick_clips(root: zarr.Group, faces: str, audio: str, *, clips: int, statuses: tuple[str, ...] = ()) -> list[PreviewClip]:
    """The clips to show: committed rows, not-ok first, then the lowest face coverage, then store order."""
    f, a = root[f"features/{faces}"], root[f"features/{audio}"]
    done = f["done"][:].astype(bool) & a["done"][:].astype(bool)
    fs, as_ = f["status"][:], a["status"][:]
    coverage = f["coverage"][:] if "coverage" in f.array_keys() else np.ones(len(fs), np.float32)
    ids, split = root["clips/clip_id"][:], root["clips/split"][:]
    chosen = []
    for row in np.flatnonzero(done):
        status = str(fs[row]) if fs[row] == as_[row] or as_[row] == "ok" else (str(as_[row]) if fs[row] == "ok" else f"{fs[row]}/{as_[row]}")
        if statuses and not {str(fs[row]), str(as_[row])} & set(statuses):
            continue
        chosen.append(PreviewClip(int(row), str(ids[row]), status, float(coverage[row]), str(split[row])))
    chosen.sort(key=lambda c: (c.status == "ok", c.coverage, c.row))
    return chosen[:clips]


def contact_sheet(location: str, *, clips: int = 16, statuses: tuple[str, ...] = (), per_clip: int = 4) -> tuple[np.ndarray, list[PreviewClip]]:
    """(RGB uint8 image, the clips on it in order). Each clip is one band: a label line (id, status, face
    coverage, split) over `per_clip` pairs of crop and its spectrogram chunk, evenly spaced over the T steps."""
    root = zarr.open_group(locate(location).zarr_store(read_only=True), mode="r", zarr_format=3)
    faces, audio = _first_set(root, "faces"), _first_set(root, "audio")
    picked = pick_clips(root, faces, audio, clips=clips, statuses=statuses)
    crops, chunks = root[f"features/{faces}/crops"], root[f"features/{audio}/chunks"]
    steps, size = crops.shape[1], crops.shape[2]
    cell = max(size, MIN_CELL)
    take = np.unique(np.linspace(0, steps - 1, min(per_clip, steps)).round().astype(int))
    band = LABEL_HEIGHT + cell
    sheet = np.full((max(1, len(picked)) * band, len(take) * 2 * cell, 3), 255, np.uint8)
    for k, clip in enumerate(picked):
        top = k * band
        face, chunk = crops[clip.row], chunks[clip.row]
        for j, step in enumerate(take):
            left = j * 2 * cell
            sheet[top + LABEL_HEIGHT : top + band, left : left + cell] = cv2.resize(face[step], (cell, cell), interpolation=cv2.INTER_NEAREST)
            coloured = cv2.applyColorMap(np.ascontiguousarray(chunk[step]), cv2.COLORMAP_INFERNO)[:, :, ::-1]
            sheet[top + LABEL_HEIGHT : top + band, left + cell : left + 2 * cell] = cv2.resize(coloured, (cell, cell), interpolation=cv2.INTER_NEAREST)
        colour = (0, 110, 0) if clip.status == "ok" else (190, 0, 0)
        label = f"{clip.clip_id}  {clip.status}  face {clip.coverage:.2f}  {clip.split or '-'}"
        cv2.putText(sheet, label, (3, top + LABEL_HEIGHT - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return sheet, picked


def write_preview(location: str, out: Path, **options) -> list[PreviewClip]:
    """Write the contact sheet as a PNG at `out`; the clip ids shown go in its text metadata ("avstore:clips")."""
    from PIL import Image, PngImagePlugin

    sheet, picked = contact_sheet(location, **options)
    info = PngImagePlugin.PngInfo()
    info.add_text("avstore:clips", ",".join(c.clip_id for c in picked))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(out, pnginfo=info)
    return picked


class PreviewError(ValueError):
    """A preview that cannot be drawn: a status no clip can have, or a store without faces or audio."""


def preview_and_report(store: str, out: Path, *, clips: int, statuses: tuple[str, ...] = ()) -> None:
    """`cli.py preview`: write the contact sheet of `store` to `out` and say which clip leads it."""
    from pipeline.extract import STATUSES  # the statuses extract gives (not imported with this module: it pulls the stages in)

    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise PreviewError(f"unknown --status '{unknown[0]}'; choose from: {', '.join(STATUSES)}")
    with reading(f"store '{store}'"):
        FeatureStore.open(store)
        try:
            shown = write_preview(store, out, clips=clips, statuses=statuses)
        except LookupError as err:
            raise PreviewError(f"{err} (store '{store}')") from None
    print(f"wrote {out}: {len(shown)} clips" + (f", first {shown[0].clip_id} ({shown[0].status}, face coverage {shown[0].coverage:.2f})" if shown else ""))


def _first_set(root: zarr.Group, kind: str) -> str:
    """The newest algorithm's set of this kind (a store may also hold sets made by older versions)."""
    sets = [(group.attrs.get("params", {}).get("algorithm", 0), name) for name, group in root["features"].groups() if group.attrs.get("kind") == kind]
    if not sets:
        raise LookupError(f"the store has no {kind} feature set; run extract first")
    return max(sets)[1]
