"""Teacher-signal stores: compute the teacher once, train many students from disk."""

from kdforge.store.codecs import build_codec
from kdforge.store.manifest import Manifest
from kdforge.store.reader import StoreReader
from kdforge.store.writer import build_store, finalize_store, plan_store

__all__ = ["Manifest", "StoreReader", "build_codec", "build_store", "finalize_store", "plan_store"]
