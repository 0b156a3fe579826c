"""A real ``twistd`` on a real PostgreSQL server: the API, bitelab-admin, a
kill -9 and restart, and the database's own errors."""

import concurrent.futures

import pytest

from support.server import LabServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def pg_lab(lab_server, postgres_server):
    """A server whose database is a fresh PostgreSQL database."""
    return lab_server(settings={"db_url": postgres_server.database()})


def test_reserve_release_and_admin_on_postgresql(pg_lab):
    """Tokens minted by bitelab-admin work; reserve, release and the audit
    log go through PostgreSQL; a kill -9 loses nothing committed."""
    alice, root = pg_lab.token("alice"), pg_lab.token("root")
    status, board = pg_lab.request("POST", "/api/v1/boards/zynq/reserve", {}, alice)
    assert status == 200 and board["holder"] == "alice" and board["reservation_id"]
    pg_lab.kill()
    pg_lab.start()
    again = pg_lab.get(f"/api/v1/boards/{board['name']}", alice)
    assert again["holder"] == "alice"
    assert again["reservation_id"] == board["reservation_id"]
    status, freed = pg_lab.request(
        "POST", f"/api/v1/boards/{board['name']}/release", {}, alice
    )
    assert status == 200 and freed["state"] == "free"
    events = pg_lab.get(f"/api/v1/events?board={board['name']}", root)["events"]
    assert [e["action"] for e in events][:3] == ["freed", "releasing", "reserved"]
    result = pg_lab.admin("events", "--user", "alice", "--json")
    assert result.returncode == 0 and '"reserved"' in result.stdout


def test_concurrent_class_reserves_on_postgresql(pg_lab):
    """Clients racing for a class on PostgreSQL never share a board."""
    tokens = [pg_lab.token(f"u{i}") for i in range(8)]

    def reserve(token):
        return pg_lab.request("POST", "/api/v1/boards/zynq/reserve", {}, token)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(reserve, tokens))
    names = [body["name"] for status, body in results if status == 200]
    assert len(names) == 3 == len(set(names))
    assert all(status in (200, 409) for status, _ in results)


def test_unreachable_postgresql_is_one_line(tmp_path, postgres_server):
    """A db_url nobody answers stops the server at start with one line."""
    server = LabServer(
        tmp_path / "lab",
        settings={"db_url": "postgresql://nobody@127.0.0.1:1/none"},
    )
    result = server.admin("check")
    assert result.returncode != 0 or "cannot" in result.stderr
    with pytest.raises(AssertionError, match="cannot use the database"):
        server.start(timeout=15)
    assert "Traceback" not in server.log()


def test_migrate_a_populated_sqlite_lab(lab_server, postgres_server):
    """bitelab-admin migrate copies a SQLite lab (reservations, tokens, audit
    log) into PostgreSQL; it refuses while the server runs; the server then
    runs on PostgreSQL with everything in place, and new ids follow the old."""
    server = lab_server()
    alice = server.token("alice")
    status, held = server.request("POST", "/api/v1/boards/pine-1/reserve", {}, alice)
    assert status == 200
    server.request("POST", "/api/v1/boards/zynq-1/reserve", {}, alice)
    server.request("POST", "/api/v1/boards/zynq-1/release", {}, alice)
    url = postgres_server.database()
    refused = server.admin("migrate", "--to", url)
    assert refused.returncode == 2 and "running" in refused.stderr
    server.stop()
    result = server.admin("migrate", "--to", url)
    assert result.returncode == 0, result.stderr
    assert "copied" in result.stdout and "reservations" in result.stdout
    again = server.admin("migrate", "--to", url)
    assert again.returncode == 1 and "empty database" in again.stderr
    with open(server.env_path) as f:
        text = f.read().replace("db_file=bitelab.sqlite", f"db_url={url}")
    with open(server.env_path, "w") as f:
        f.write(text)
    server.start()
    board = server.get("/api/v1/boards/pine-1", alice)
    assert board["holder"] == "alice"
    assert board["reservation_id"] == held["reservation_id"]
    status, other = server.request("POST", "/api/v1/boards/zynq-2/reserve", {}, alice)
    assert status == 200 and other["reservation_id"] > held["reservation_id"]
    root = server.token("root")
    actions = [
        e["action"] for e in server.get("/api/v1/events?limit=50", root)["events"]
    ]
    assert actions.count("reserved") == 3 and "freed" in actions
