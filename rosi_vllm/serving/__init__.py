"""Serving layer: tenants and per-tenant α, A/B arms, metrics (see `middleware`)."""
