"""The storefront: static pages whose scripts call each service's API on the same origin."""
