"""CREMA-D (Cao et al., 2014): 7,442 clips, 91 actors, 12 sentences, 6 emotions, 4 intensity levels.

Licence: Open Database License 1.0; contents under the Database Contents License.
Layout as distributed::

    <root>/VideoFlash/<Actor>_<Sentence>_<Emotion>_<Level>.flv   480x360, ~30 fps, with an audio track
    <root>/AudioWAV/<same>.wav                                   16 kHz mono (optional here)

When `AudioWAV/` lacks a clip, the video's own audio track is used instead. The metadata tables of the
dataset's repository (`VideoDemographics.csv`, `tabulatedVotes.csv`) can be joined with `meta=DIR`:
actor demographics and the crowd's perceived emotion per presentation mode (voice, face, audio-visual): the
majority and agreement in `extra`, every rater's vote in `votes` (pipeline/votes.py).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

from pipeline.corpora.base import CorpusError, register_corpus
from pipeline.records import CREMA_D_EMOTIONS, ClipRecord
from pipeline.votes import read_tabulated_votes

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<level>[A-Z]{2})$")

KNOWN_BROKEN: dict[str, str] = {
    "1076_MTI_NEU_XX": "documented: very short, no audio in the video",
    "1076_MTI_SAD_XX": "documented: error picture, no audio, very short",
    "1064_TIE_SAD_XX": "documented: file has no duration",
    "1064_IEO_DIS_MD": "documented: a one-minute take holding every emotion of the sentence",
}
"""The problem clips listed in the dataset's own README."""

VOTE_MODES = {"1": "voice", "2": "face", "3": "av"}
"""tabulatedVotes.csv's row ids start with the presentation mode (the repository's queryType)."""


def parse_clip_name(name: str) -> dict[str, str]:
    """Split `1001_IEO_NEU_XX` into its fields; raises CorpusError on anything else."""
    match = NAME_RE.match(name)
    if match is None or match["emotion"] not in CREMA_D_EMOTIONS:
        raise CorpusError(f"'{name}' is not a CREMA-D clip name (expected e.g. 1001_IEO_NEU_XX)")
    return match.groupdict()


def record_for(name: str, video_path: Path, audio_path: Path | None, broken: dict[str, str]) -> ClipRecord:
    fields = parse_clip_name(name)
    return ClipRecord(
        clip_id=name,
        video_path=str(video_path),
        audio_path=str(audio_path) if audio_path is not None else None,
        label=CREMA_D_EMOTIONS.index(fields["emotion"]),
        emotion=fields["emotion"],
        speaker=fields["actor"],
        sentence=fields["sentence"],
        intensity=fields["level"],
        broken=broken.get(name, ""),
    )


@register_corpus("crema-d", description="CREMA-D as distributed (VideoFlash/*.flv, AudioWAV/*.wav)", class_names=CREMA_D_EMOTIONS)
def load(root: Path, meta: Path | None = None, *, known_broken: dict[str, str] = KNOWN_BROKEN) -> list[ClipRecord]:
    """Records for every `VideoFlash/*.flv` under `root`, sorted by clip id."""
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"dataset root '{root}' does not exist; pass --root pointing at the folder that holds VideoFlash/")
    video_dir = root / "VideoFlash"
    if not video_dir.is_dir():
        raise CorpusError(f"'{root}' has no VideoFlash/ folder; pass --root pointing at the CREMA-D download (the folder holding VideoFlash/ and AudioWAV/)")
    videos = sorted(video_dir.glob("*.flv"))
    if not videos:
        raise CorpusError(f"'{video_dir}' holds no .flv files; is the git-lfs download complete? (`git lfs pull` in the CREMA-D clone)")
    records, unparsed = [], []
    for video in videos:
        if NAME_RE.match(video.stem) is None:
            unparsed.append(video.name)
            continue
        wav = root / "AudioWAV" / f"{video.stem}.wav"
        records.append(record_for(video.stem, video, wav if wav.is_file() else None, known_broken))
    if unparsed:
        log.warning("skipped %d files whose names are not CREMA-D clip names: %s", len(unparsed), ", ".join(unparsed[:5]))
    if meta is not None:
        records = join_metadata(records, Path(meta))
    return records


def read_clip_names(meta: Path) -> list[str]:
    """The 7,442 clip names of `SentenceFilenames.csv`, in the file's order."""
    with open(Path(meta) / "SentenceFilenames.csv", newline="") as f:
        return [row["Filename"] for row in csv.DictReader(f)]


def read_demographics(meta: Path) -> dict[str, dict[str, str]]:
    """Actor id -> {age, sex, race, ethnicity}."""
    with open(Path(meta) / "VideoDemographics.csv", newline="") as f:
        return {
            row["ActorID"]: {"age": row["Age"], "sex": row["Sex"], "race": row["Race"], "ethnicity": row["Ethnicity"]}
            for row in csv.DictReader(f)
        }


def read_perceived_emotions(meta: Path) -> dict[str, dict[str, str | float]]:
    """Clip name -> the crowd's majority vote and agreement per mode (voice, face, av)."""
    perceived: dict[str, dict[str, str | float]] = {}
    with open(Path(meta) / "tabulatedVotes.csv", newline="") as f:
        for row in csv.DictReader(f):
            mode = VOTE_MODES.get(row[""][:1])
            if mode is None:
                continue
            entry = perceived.setdefault(row["fileName"], {})
            entry[f"perceived_{mode}"] = row["emoVote"]
            entry[f"agreement_{mode}"] = float(row["agreement"])
    return perceived


def join_metadata(records: list[ClipRecord], meta: Path) -> list[ClipRecord]:
    """Attach demographics, perceived emotions and every rater's vote from the dataset's tables in `meta`.

    Either table may be missing (the sample corpus writes only tabulatedVotes.csv), not both."""
    has_demographics, has_votes = (meta / "VideoDemographics.csv").is_file(), (meta / "tabulatedVotes.csv").is_file()
    if not (has_demographics or has_votes):
        raise CorpusError(f"'{meta}' lacks VideoDemographics.csv and tabulatedVotes.csv; pass --meta pointing at CREMA-D's metadata tables")
    demographics = read_demographics(meta) if has_demographics else {}
    perceived = read_perceived_emotions(meta) if has_votes else {}
    votes = read_tabulated_votes(meta / "tabulatedVotes.csv") if has_votes else {}
    joined = []
    for record in records:
        extra = {**record.extra, **demographics.get(record.speaker, {}), **perceived.get(record.clip_id, {})}
        joined.append(ClipRecord(**{**record.to_dict(), "extra": extra, "votes": votes.get(record.clip_id, record.votes)}))
    return joined


@register_corpus("sample", description="the generated sample corpus (`cli.py sample`), in CREMA-D's layout", class_names=CREMA_D_EMOTIONS)
def load_sample(root: Path, meta: Path | None = None) -> list[ClipRecord]:
    """The generated sample corpus: CREMA-D's layout; its deliberately broken clips are listed in SAMPLE.json.

    Its generated votes (`tabulatedVotes.csv` beside VideoFlash/) are read without --meta; --meta DIR reads DIR's."""
    described = Path(root) / "SAMPLE.json"
    if meta is None and (Path(root) / "tabulatedVotes.csv").is_file():
        meta = Path(root)
    broken = {}
    if described.is_file():
        broken = {b["id"]: f"generated to fail with {b['expect']}" for b in json.loads(described.read_text()).get("broken", [])}
    return load(root, meta, known_broken=broken)

