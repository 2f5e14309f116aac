// Zero-downtime upgrade.
