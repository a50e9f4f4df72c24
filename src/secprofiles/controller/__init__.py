"""The operator: reconciles profiles, aggregates node reports, protects profiles in use."""
