"""Drives the client openapi-python-client generated from openapi.yaml
(default options) against a running permitd: acquire with no body and with
a body, a 429 when full, and a release (scripts/test-generators)."""

import os
import sys
from http import HTTPStatus

from permitd_generated import Client
from permitd_generated.api.permits import acquire_permit, release_permit
from permitd_generated.api.semaphores import put_semaphore
from permitd_generated.models import AcquireBody, PermitView, SetLimitBody


def expect(what: str, status: HTTPStatus, wanted: HTTPStatus) -> None:
    if status != wanted:
        sys.exit(f"{what}: {int(status)}, wanted {int(wanted)}")


def main() -> None:
    client = Client(base_url=sys.argv[1])
    name = f"generated-py-{os.getpid()}"
    made = put_semaphore.sync_detailed(name, client=client, body=SetLimitBody(limit=2))
    expect("create", made.status_code, HTTPStatus.CREATED)

    bare = acquire_permit.sync_detailed(name, client=client)
    expect("acquire with no body", bare.status_code, HTTPStatus.CREATED)
    body = AcquireBody(ttl_ms=5000, holder="generated")
    full = acquire_permit.sync_detailed(name, client=client, body=body)
    expect("acquire with a body", full.status_code, HTTPStatus.CREATED)
    refused = acquire_permit.sync_detailed(name, client=client)
    expect("acquire when full", refused.status_code, HTTPStatus.TOO_MANY_REQUESTS)

    assert isinstance(full.parsed, PermitView), full.parsed
    released = release_permit.sync_detailed(name, full.parsed.id, client=client)
    expect("release", released.status_code, HTTPStatus.NO_CONTENT)
    again = acquire_permit.sync_detailed(name, client=client, body=body)
    expect("acquire after the release", again.status_code, HTTPStatus.CREATED)
    print("openapi-python-client: 201, 201, 429, 204, 201")


if __name__ == "__main__":
    main()
