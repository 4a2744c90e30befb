"""catalog: merchants, products, prices and per-product commission rules."""
