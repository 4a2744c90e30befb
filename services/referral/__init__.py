"""referral: users, invite codes, the referral graph, commissions and their explanation."""
