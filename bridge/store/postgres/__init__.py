"""The PostgreSQL backend: one store shared by several replicas of the bridge."""
