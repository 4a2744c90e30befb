"""The five Linkshop services. No service imports another: they meet on the bus."""
