"""payout: the double-entry ledger, split settlement, holds, refunds with clawback, withdrawals."""
