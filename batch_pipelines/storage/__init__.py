"""Storage: where everything the plugin keeps between runs lives, a local folder or object storage.

Dagster-free. A storage is named by a local path or an fsspec URL (``s3://bucket/prefix``,
``gs://...``, ``az://...``); credentials come from the environment as fsspec and boto find them,
never from configuration.

- :mod:`.store` the files of one storage: atomic writes, listing, deletion;
- :mod:`.working_copy` local files for the code that needs a path (shards a provider uploads,
  memory-mapped segments): the storage itself when local, a per-run scratch copy otherwise;
- :mod:`.retention` deleting what is older than a retention period, never what is still in use.
"""

from batch_pipelines.storage.retention import Cleanup, clean_up
from batch_pipelines.storage.store import Storage, StoredFile
from batch_pipelines.storage.working_copy import WorkingCopy

__all__ = ["Cleanup", "Storage", "StoredFile", "WorkingCopy", "clean_up"]
