"""PyCloud's Redis API: a second front door to the daemon service (see `service`)."""
