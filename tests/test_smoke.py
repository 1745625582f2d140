from shareddb import DbService


def test_connection_round_trip_on_both_backends(db: DbService) -> None:
    with db.connection() as conn:
        assert conn.execute("SELECT 1 + 1").fetchone()[0] == 2
