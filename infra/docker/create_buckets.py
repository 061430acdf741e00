#!/app/.venv/bin/python
"""Create the S3 buckets the stack profile writes to (the lake's and the MLflow server's), when missing.

Run once per deployment, before anything writes (docker compose service ``s3-init``, the Helm Job in
``infra/helm/storefront-jobs.yaml``); running it again creates nothing twice. It reads the settings every other
process reads: STOREFRONT_LAKE_URI, STOREFRONT_MLFLOW_ARTIFACTS_DESTINATION, STOREFRONT_S3_ENDPOINT_URL (empty on
AWS), STOREFRONT_S3_REGION, and the credentials AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment.
"""

from __future__ import annotations

import sys
import time
from urllib.parse import urlparse

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from pipelines.settings import get_settings

# The S3 server may still be loading its volumes after its HTTP port answers.
ATTEMPTS = 30
PAUSE_SECONDS = 2.0


def bucket_names(uris: list[str]) -> list[str]:
    """The distinct buckets of the ``s3://`` URIs among ``uris``."""
    return sorted({urlparse(uri).netloc for uri in uris if uri.startswith("s3://")})


def existing_buckets(client) -> set[str]:
    """Bucket names the server lists, retrying while it cannot be reached; a refusal (bad key) fails at once."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        except BotoCoreError as exc:
            if attempt == ATTEMPTS:
                raise
            print(f"S3 not ready ({exc}); retrying in {PAUSE_SECONDS:.0f} s", file=sys.stderr)
            time.sleep(PAUSE_SECONDS)
    raise AssertionError("unreachable")


def main() -> int:
    settings = get_settings()
    names = bucket_names([settings.lake_uri, settings.mlflow_artifacts_destination])
    endpoint = settings.s3_endpoint_url or None
    where = endpoint or f"AWS S3 ({settings.s3_region})"
    if not names:
        print("no s3:// location configured (STOREFRONT_LAKE_URI, STOREFRONT_MLFLOW_ARTIFACTS_DESTINATION)")
        return 0
    # Credentials: boto3's default chain, i.e. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment.
    client = boto3.client("s3", endpoint_url=endpoint, region_name=settings.s3_region)
    try:
        existing = existing_buckets(client)
        for name in names:
            if name in existing:
                print(f"bucket {name}: exists at {where}")
                continue
            # Outside us-east-1, AWS wants the region spelled out again.
            extra = (
                {}
                if settings.s3_region == "us-east-1"
                else {"CreateBucketConfiguration": {"LocationConstraint": settings.s3_region}}
            )
            client.create_bucket(Bucket=name, **extra)
            print(f"bucket {name}: created at {where}")
    except (BotoCoreError, ClientError) as exc:
        print(
            f"error: cannot list or create buckets {names} at {where}: {exc}\nCheck STOREFRONT_S3_ENDPOINT_URL and the "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY pair (it must be an identity of that S3 server).",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
