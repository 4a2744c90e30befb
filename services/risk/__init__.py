"""risk: order screening, self-referral and ring detection, withdrawal review."""
