"""The kernel every Linkshop service stands on: config, db, events, bus, outbox/inbox, web."""
