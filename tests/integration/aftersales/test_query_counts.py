"""List endpoints do a fixed number of queries, whatever the page size."""
import contextlib

from sqlalchemy import event

from shopdesk.core.db import get_engine
from tests.integration.aftersales.test_flows import create


@contextlib.contextmanager
def count_queries():
    seen = []

    def before(conn, cursor, statement, *args):
        if not statement.lstrip().upper().startswith(("BEGIN", "PRAGMA", "ROLLBACK", "COMMIT")):
            seen.append(statement)

    engine = get_engine().sync_engine
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


async def test_case_list_query_count_does_not_grow_with_the_page(shop):
    order = await shop.order()
    buyer = await shop.shopper(order)
    await create(shop, order, buyer, "compensation", "price_drop", [("A", 1)], amount_fen=100)
    with count_queries() as one:
        assert len((await shop.get("/aftersales")).json()["items"]) == 1
    for _ in range(4):
        o = await shop.order()
        await create(shop, o, await shop.shopper(o), "compensation", "price_drop", [("A", 1)], amount_fen=100)
    with count_queries() as five:
        assert len((await shop.get("/aftersales")).json()["items"]) == 5
    assert len(one) == len(five) <= 8, five
