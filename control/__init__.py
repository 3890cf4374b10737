"""ferry control service: volumes, hosts and leases (not implemented yet, see issue 3)."""
