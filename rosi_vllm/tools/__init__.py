"""First-run tooling: the embedded real models (`rosi models pull`) and `rosi demo`."""
