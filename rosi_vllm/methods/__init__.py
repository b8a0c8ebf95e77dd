"""Edit methods: one folder each, looked up by name in the registry."""
