"""Schemathesis hooks for tests/openapi/schemathesis.sh: keep every request short, change no check.

A blocking query (`GET /v1/groups/{group}?index=N`) legitimately waits up to its `wait` (default
`60s`, at most `5m`) when the group does not change, and a fuzzer mostly asks about groups that do
not exist. So before a blocking query is sent, a valid `wait` longer than `WAIT_CAP`, or a missing
one, becomes `WAIT_CAP`: the request still blocks and still ends by its `wait`, only sooner. Values
the server must reject (malformed, over `5m`) and every other parameter are sent as generated.
"""

import re

import schemathesis

WAIT_CAP = "1s"
WAIT_CAP_MS = 1_000
MAX_WAIT_MS = 300_000
# The server's grammar (src/api/extract.rs): whole digits, then a unit.
DURATION = re.compile(r"([0-9]+)(ms|s|m|h)")
UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000}


def _wait_ms(value):
    """The duration in ms if the server accepts `value` as a wait, else None."""
    match = DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    ms = int(match.group(1)) * UNIT_MS[match.group(2)]
    return ms if ms <= MAX_WAIT_MS else None


def _is_index(value):
    return isinstance(value, (str, int)) and not isinstance(value, bool) and re.fullmatch(r"[0-9]{1,20}", str(value)) \
        and int(value) < 2**64


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.method.upper() != "GET" or case.operation.path != "/v1/groups/{group}":
        return
    query = case.query
    if not isinstance(query, dict) or not _is_index(query.get("index")):
        return
    wait = query.get("wait")
    if wait is None:
        query["wait"] = WAIT_CAP
    elif (ms := _wait_ms(wait)) is not None and ms > WAIT_CAP_MS:
        query["wait"] = WAIT_CAP
