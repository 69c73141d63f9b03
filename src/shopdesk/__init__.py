"""ShopDesk: after-sales and customer service for e-commerce merchants."""
