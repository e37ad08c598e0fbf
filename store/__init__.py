"""The feature store: the only package that knows the Zarr layout (see ``store/layout.py``).

Write (stage one)::

    from store import StoreSpec, TensorSpec, create_store, PartWriter, VideoEntry, ViewRows, finalize

Read (stage two, analysis)::

    from store import FeatureStore, verify, inspect
"""

from store.codecs import configure_zarr
from store.reader import FeatureStore, VideoRecord
from store.schema import StoreSpec, TensorSpec
from store.verify import finalize, inspect, verify
from store.writer import PartWriter, VideoEntry, ViewRows, create_store, set_complete, validate_id

configure_zarr()

__all__ = [
    "FeatureStore",
    "PartWriter",
    "StoreSpec",
    "TensorSpec",
    "VideoEntry",
    "VideoRecord",
    "ViewRows",
    "create_store",
    "finalize",
    "inspect",
    "set_complete",
    "validate_id",
    "verify",
]
