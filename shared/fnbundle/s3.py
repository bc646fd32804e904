"""Datasets from S3-compatible object stores: AWS S3, Cloudflare R2, MinIO, a RunPod
network volume's S3 API.

Key rules: the endpoint, region and keys come from the settings (``FNB_S3_*``, else
boto3's usual ``AWS_*`` variables and files), never from the request; the request names
only ``s3://bucket/key``. Every call has a deadline: ``s3_timeout_s`` to connect and
between bytes, ``dataset_upload_timeout_s`` for the whole download, two attempts at most.
The object's size is checked before a byte is downloaded. The store's answers map to
clear errors: no such bucket or key 404, access refused 400 naming the settings, an
unreachable or slow store 503.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fnbundle.errors import FnbError, InvalidRequest, NotFound, PayloadTooLarge, UpstreamUnavailable
from fnbundle.settings import MIB

if TYPE_CHECKING:
    from fnbundle.datasets import DatasetInfo, DatasetStore
    from fnbundle.settings import Settings

# Bucket names as S3 allows them (3-63 of a-z 0-9 . -), a key of printable characters.
S3_URI = re.compile(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/([^\x00-\x1f\x7f]{1,1024})")
CHUNK = 1 << 20


class S3Refused(FnbError):
    status, type = 400, "s3_refused"


def parse_uri(uri: str) -> tuple[str, str]:
    found = S3_URI.fullmatch(uri.strip())
    if not found:
        raise InvalidRequest(f"{uri[:200]!r} is not an s3://bucket/key URI.", field="source")
    return found.group(1), found.group(2)


def client(settings: Settings) -> Any:
    try:
        import boto3
    except ImportError:
        from fnbundle.tabular.read import ExtraMissing

        raise ExtraMissing(
            "s3:// datasets need boto3 (the tabular extra): pip install 'fnbundle[tabular]'.",
            field="source",
        ) from None
    from botocore.config import Config

    secret = settings.s3_secret_access_key.get_secret_value()
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region or None,
        aws_access_key_id=settings.s3_access_key_id or None,
        aws_secret_access_key=secret or None,
        config=Config(
            connect_timeout=settings.s3_timeout_s,
            read_timeout=settings.s3_timeout_s,
            retries={"max_attempts": 2, "mode": "standard"},
            signature_version="s3v4",
        ),
    )


def import_s3(
    uri: str, store: DatasetStore, settings: Settings, name: str | None = None
) -> tuple[DatasetInfo, bool]:
    """Download ``uri`` into a dataset (see the module docstring)."""
    bucket, key = parse_uri(uri)
    s3 = client(settings)  # ExtraMissing first where boto3 is not installed
    from botocore.exceptions import BotoCoreError, ClientError

    limit = int(settings.dataset_max_mib * MIB)
    deadline = time.monotonic() + settings.dataset_upload_timeout_s
    try:
        size = int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        if size > limit:
            raise PayloadTooLarge(
                f"{uri} is {size} bytes, over the limit of {limit} bytes (FNB_DATASET_MAX_MIB).",
                field="source",
            )
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]

        def chunks() -> Iterator[bytes]:
            while chunk := body.read(CHUNK):
                if time.monotonic() > deadline:
                    raise UpstreamUnavailable(
                        f"Downloading {uri} took over {settings.dataset_upload_timeout_s:g} s.",
                        field="source",
                    )
                yield chunk

        return store.add_chunks(
            chunks(), name=name or key.rsplit("/", 1)[-1], max_bytes=limit, source=uri
        )
    except ClientError as exc:
        raise _client_error(uri, exc) from None
    except BotoCoreError as exc:  # no endpoint, a timeout, no credentials
        if type(exc).__name__ in {"NoCredentialsError", "PartialCredentialsError"}:
            raise S3Refused(
                f"No S3 credentials to read {uri}: set FNB_S3_ACCESS_KEY_ID and "
                "FNB_S3_SECRET_ACCESS_KEY.",
                field="source",
            ) from None
        raise UpstreamUnavailable(
            f"The S3 store did not answer for {uri}: {exc}", field="source"
        ) from None


def _client_error(uri: str, exc: Any) -> FnbError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in {"NoSuchKey", "NoSuchBucket", "NotFound", "404"} or status == 404:
        return NotFound(f"{uri} does not exist on the S3 store.", field="source")
    if status in {401, 403} or code in {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "403",
    }:
        return S3Refused(
            f"The S3 store refused to read {uri} ({code or status}): check FNB_S3_ACCESS_KEY_ID, "
            "FNB_S3_SECRET_ACCESS_KEY and the bucket's policy.",
            field="source",
        )
    return UpstreamUnavailable(f"The S3 store answered {code or status} for {uri}.", field="source")
