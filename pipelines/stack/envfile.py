"""``mlctl stack init``: an env file for the stack profile with freshly generated loopback S3 credentials."""

from __future__ import annotations

import secrets
from pathlib import Path

TEMPLATE = """\
# Storefront ML, stack profile (docs/stack.md). Every other setting has a loopback default; override here.
STOREFRONT_PROFILE=stack
# Credentials of the loopback S3 (SeaweedFS) that `mlctl stack up` creates; on AWS put your own here.
AWS_ACCESS_KEY_ID={key}
AWS_SECRET_ACCESS_KEY={secret}
# The simulated world starts here. The scheduler runs each new day; `mlctl backfill` fills in history
# (with catchup on, the scheduler itself would work through every day since the start).
STOREFRONT_START_DATE=2025-01-01
STOREFRONT_AIRFLOW_CATCHUP=false
"""


def write_env_file(path: Path) -> Path:
    """Write the env file (mode 0600); refuse to overwrite one that exists."""
    if path.exists():
        raise FileExistsError(f"{path} exists; edit it, or move it away and run `mlctl stack init` again")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(TEMPLATE.format(key="SF" + secrets.token_hex(9).upper(), secret=secrets.token_urlsafe(30)))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path.resolve()
