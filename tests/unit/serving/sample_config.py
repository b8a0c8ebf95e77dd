"""The tenant config the serving unit tests start from: two tenants, three variants, one experiment."""

from __future__ import annotations

from rosi_vllm.serving.tenant_config import BAKED, key_digest

KEY_A = key_digest("key-a")


def config(**overrides):
    data = {
        "version": 1,
        "alpha_bounds": {"min": 0, "max": 64},
        "policies": {"assistant_prefill": "deny", "control_tokens_in_content": "reject"},
        "variants": {"base": 0, "standard": BAKED, "strict": 32},
        "tenants": {
            "acme": {"api_key_sha256": [KEY_A], "default_variant": "standard",
                     "allowed_variants": ["standard", "strict"]},
            "beta": {"api_key_env": ["BETA_KEY"], "default_variant": "strict", "policies": {"raw_completions": "allow"},
                     "experiment": {"name": "exp1", "arms": {"base": 50, "strict": 50}}},
        },
    }
    data.update(overrides)
    return data


ENV = {"BETA_KEY": "key-b"}
