"""List endpoints do a fixed number of queries, whatever the page size."""
from tests.factories import count_queries
from tests.integration.aftersales.test_flows import create


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
