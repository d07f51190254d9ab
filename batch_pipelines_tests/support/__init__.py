"""What the tests share: waiting on conditions, request files, the local service, SDK clients, the
Dagster driver. Test modules import from here, never from one another."""
