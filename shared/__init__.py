"""The library the Fleetdesk services share: contracts, bus, store, auth, config, logs, HTTP."""
