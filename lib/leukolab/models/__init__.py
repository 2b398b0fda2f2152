"""Models: one factory that builds any experiment's network from its YAML."""
