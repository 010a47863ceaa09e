"""The feature path's thread pin, re-exported: it lives in `stores.numeric` so that `encoders/` (face
embeddings, which must not import `pipeline/`) pins its kernels with the very same reference-counted state."""

from stores.numeric import THREADS, numeric_environment, pinned, single_threaded

__all__ = ["THREADS", "numeric_environment", "pinned", "single_threaded"]
