import httpx

from tests.conftest import Server


def test_server_ready(server: Server) -> None:
    r = httpx.get(f"{server.url}/v2/health/ready")
    assert r.status_code == 200
    assert r.json() == {"ready": True}
