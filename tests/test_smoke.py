import httpx
import pytest

from tests.conftest import Server

pytestmark = pytest.mark.e2e


def test_server_ready(server: Server) -> None:
    r = httpx.get(f"{server.url}/v2/health/ready")
    assert r.status_code == 200
    assert r.json() == {"ready": True}
