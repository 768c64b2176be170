"""The soak harness: a scripted app (soak.app) and the load that runs against it (soak.run)."""
