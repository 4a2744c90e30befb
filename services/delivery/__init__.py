"""delivery: the encrypted card-key vault, orders, payments, allocation and delivery to buyers."""
