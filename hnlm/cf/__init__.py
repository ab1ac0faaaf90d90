"""CF engine: MF and LightGCN, negative samplers, losses, trainer and full-ranking evaluation."""
