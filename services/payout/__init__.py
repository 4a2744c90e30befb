"""payout: the double-entry ledger, settlement, holds, refunds, withdrawals (skeleton until its issue lands)."""
