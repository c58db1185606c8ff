"""calculationCount and resubmitCalculation through the ASGI app, on both databases."""

from __future__ import annotations

from typing import Any

from tests.app.test_calculations_api import status_of, submit
from tests.conftest import GraphQLClient, error_codes, wait_for

COUNT = "query($s: CalculationStatus, $k: String) { calculationCount(status: $s, kind: $k) }"
RESUBMIT = "mutation($id: ID!) { resubmitCalculation(id: $id) { id status kind input } }"


async def finished(client: GraphQLClient, calculation_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        calc = await status_of(client, calculation_id)
        return calc if calc["status"] == "SUCCEEDED" else None

    result: dict[str, Any] = await wait_for(check, timeout=90)
    return result


async def count(client: GraphQLClient, **variables: Any) -> int:
    body = await client.execute(COUNT, variables)
    assert "errors" not in body, body
    return int(body["data"]["calculationCount"])


async def test_resubmit_reproduces_the_result_and_counts_follow(client: GraphQLClient) -> None:
    client.token = (await client.register())["accessToken"]
    original = await submit(client, {"monteCarloPi": {"samples": "300000"}})
    first = await finished(client, original["id"])
    body = await client.execute(RESUBMIT, {"id": original["id"]})
    assert "errors" not in body, body
    again = body["data"]["resubmitCalculation"]
    assert again["id"] != original["id"]
    assert again["input"] == original["input"]  # the drawn seed too
    second = await finished(client, again["id"])
    assert second["result"] == first["result"]  # same seed, same samples: same numbers
    await submit(client, {"primeCount": {"limit": "1000"}})
    await finished(client, (await submit(client, {"primeCount": {"limit": "10"}}))["id"])
    assert await count(client) == 4
    assert await count(client, k="monteCarloPi") == 2
    assert await count(client, k="monteCarloPi", s="SUCCEEDED") == 2
    assert await count(client, s="FAILED") == 0
    # Another user sees none of them, and cannot resubmit them.
    client.token = (await client.register())["accessToken"]
    assert await count(client) == 0
    refused = await client.execute(RESUBMIT, {"id": original["id"]})
    assert error_codes(refused) == ["NOT_FOUND"]
    assert await count(client) == 0


async def test_bad_input_is_refused(client: GraphQLClient) -> None:
    assert error_codes(await client.execute(COUNT)) == ["UNAUTHENTICATED"]
    assert error_codes(await client.execute(RESUBMIT, {"id": "x"})) == ["UNAUTHENTICATED"]
    client.token = (await client.register())["accessToken"]
    assert error_codes(await client.execute(COUNT, {"k": "nope" * 100})) == ["BAD_USER_INPUT"]
    for bad_id in ["x", "00000000-0000-0000-0000-000000000000"]:
        assert error_codes(await client.execute(RESUBMIT, {"id": bad_id})) == ["NOT_FOUND"]
    assert await count(client) == 0
