"""Where an uploaded dataset must also be, so that the workers training on it read it.

A dataset arrives at a gateway (``POST /v1/datasets``); the job that trains on it may run
elsewhere. :func:`dataset_sync` picks what the gateway does after a dataset is added or
deleted, and before it reads the datasets folder:

* local workers share the gateway's store: nothing (:class:`LocalDatasets`);
* Modal: the jobs web app and the training functions mount one Volume: commit it after a
  change (the training function reloads it before a job), reload it before reading
  (:class:`VolumeDatasets`, built by ``functions/train_classifier.py``);
* RunPod: the workers mount a network volume the gateway cannot see, but can write through
  the volume's S3-compatible API (``FNB_JOBS_RUNPOD_VOLUME``, the volume id, as the
  bucket; endpoint, region and keys from the ``FNB_S3_*`` settings): the dataset's folder
  is copied to ``<jobs_runpod_volume_prefix>/datasets/<id>/``, where a worker's store
  finds it (:class:`S3MirroredDatasets`).

Key rules: the data file is written before ``info.json``, so a worker never sees a dataset
without its file; the same dataset posted again is copied again if it is missing there
(a failed copy is retried by posting the file again: the local dataset is kept, and the
answer is a 503 saying so). Every remote call has the S3 settings' short deadlines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from fnbundle.errors import FnbError
from fnbundle.settings import Settings

log = logging.getLogger(__name__)

INFO = "info.json"


class DatasetSync(Protocol):
    def refresh(self) -> None:
        """Before reading the datasets folder: see what other machines added."""
        ...

    def added(self, dataset_id: str, folder: Path) -> None:
        """A dataset is in ``folder`` (new or posted again): make it visible to workers."""
        ...

    def deleted(self, dataset_id: str) -> None: ...


class SyncFailed(FnbError):
    """The dataset is kept here but the workers cannot read it yet."""

    status, type = 503, "unavailable"


class LocalDatasets:
    """Workers on this machine read the gateway's own store."""

    def refresh(self) -> None:
        """Nothing to see: one folder."""

    def added(self, dataset_id: str, folder: Path) -> None:
        """Already where the workers look."""

    def deleted(self, dataset_id: str) -> None:
        """Gone for the workers too."""


class VolumeDatasets:
    """A Modal Volume shared by the web app and the training functions."""

    def __init__(self, reload: Callable[[], None], commit: Callable[[], None]):
        self.reload, self.commit = reload, commit

    def refresh(self) -> None:
        try:
            self.reload()
        except Exception as exc:  # e.g. a reload while a file is open: read what is here
            log.warning("could not reload the Volume before reading datasets: %s", exc)

    def added(self, dataset_id: str, folder: Path) -> None:
        self._commit(dataset_id)

    def deleted(self, dataset_id: str) -> None:
        self._commit(dataset_id)

    def _commit(self, dataset_id: str) -> None:
        try:
            self.commit()
        except Exception as exc:
            raise SyncFailed(
                f"Dataset {dataset_id} is stored but the Volume commit failed ({exc}); post "
                "the file again to retry.",
                field="file",
            ) from exc


class S3MirroredDatasets:
    """A RunPod network volume written through its S3-compatible API."""

    def __init__(self, settings: Settings, bucket: str, prefix: str):
        self.settings, self.bucket = settings, bucket
        self.prefix = prefix.strip("/")

    def key(self, dataset_id: str, name: str) -> str:
        return "/".join(p for p in (self.prefix, "datasets", dataset_id, name) if p)

    def refresh(self) -> None:
        """The gateway's own list is the list: uploads go through it."""

    def added(self, dataset_id: str, folder: Path) -> None:
        from fnbundle.s3 import client

        s3 = client(self.settings)
        where = f"s3://{self.bucket}/{self.key(dataset_id, '')}"
        try:
            try:
                s3.head_object(Bucket=self.bucket, Key=self.key(dataset_id, INFO))
                return  # already there, complete (info.json is written last)
            except s3.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
                    raise
            data = sorted(p for p in folder.iterdir() if p.is_file() and p.name != INFO)
            for path in [*data, folder / INFO]:
                s3.upload_file(str(path), self.bucket, self.key(dataset_id, path.name))
        except Exception as exc:
            raise SyncFailed(
                f"Dataset {dataset_id} is stored here but not on the RunPod volume ({where}): "
                f"{str(exc)[:300]}. Post the file again to retry.",
                field="file",
            ) from exc

    def deleted(self, dataset_id: str) -> None:
        from fnbundle.s3 import client

        s3 = client(self.settings)
        try:
            listed = s3.list_objects_v2(Bucket=self.bucket, Prefix=self.key(dataset_id, ""))
            keys = [{"Key": o["Key"]} for o in listed.get("Contents", [])]
            if keys:  # info.json first: a worker stops seeing the dataset at once
                keys.sort(key=lambda k: not k["Key"].endswith(INFO))
                s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
        except Exception as exc:
            raise SyncFailed(
                f"Dataset {dataset_id} is deleted here but not on the RunPod volume: "
                f"{str(exc)[:300]}.",
                field="id",
            ) from exc


def dataset_sync(settings: Settings) -> DatasetSync:
    """What this gateway's settings ask for: a RunPod volume to mirror to, or nothing."""
    if settings.jobs_runpod_endpoint and settings.jobs_runpod_volume:
        return S3MirroredDatasets(
            settings, settings.jobs_runpod_volume, settings.jobs_runpod_volume_prefix
        )
    return LocalDatasets()
