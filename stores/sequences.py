"""Seed 002's inputs from the store: which ComParE LLD set and which face-embedding set a sequence model reads.

The model reads the LLD frames themselves (`lld`, valid up to `lld_frames`: 32 ms windows, 16 ms step) and the
per-frame embeddings (`embedding`, valid where `found`); stores/torchdata.py's SEQUENCE_PARTS names the arrays
and `sequence_inputs` turns them into values and masks. Nothing here decodes or imports the pipeline; a store
that lacks either set gets one line naming the command that makes it.
"""

from __future__ import annotations

from stores.store import FeatureSet, FeatureStore, StoreError


class MissingSequencesError(StoreError):
    """The store lacks the LLD or the embedding feature set a sequence model reads."""


def sequence_sets(store: FeatureStore, faces: FeatureSet, lld: str | None = None, embed: str | None = None) -> tuple[FeatureSet, FeatureSet]:
    """The LLD set and the embedding set (made from `faces`) to read; a fingerprint prefix picks one of several."""
    llds = [s for s in store.feature_sets("lld") if not lld or s.fingerprint.startswith(lld)]
    if not llds:
        raise MissingSequencesError(f"store '{store.location}' has no ComParE LLD feature set; make it with "
                                    f"`python cli.py extract --store {store.location} ... --lld` (same options as before, plus --lld)")
    embeds = [s for s in store.feature_sets("embed") if s.params.get("faces") == faces.fingerprint and (not embed or s.fingerprint.startswith(embed))]
    if not embeds:
        raise MissingSequencesError(f"store '{store.location}' has no face-embedding feature set for faces {faces.fingerprint}; make it with "
                                    f"`python cli.py embed --store {store.location} --backbone vgg16 [--weights PATH]`")
    for kind, sets in (("lld", llds), ("embed", embeds)):
        if len(sets) > 1:
            raise StoreError(f"store '{store.location}' has {len(sets)} {kind} feature sets ({', '.join(s.fingerprint for s in sets)}); "
                             f"choose one with --{kind} FINGERPRINT")
    return llds[0], embeds[0]
