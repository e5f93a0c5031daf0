"""lcl_jax: Latent Compression Learning pre-training of vision encoders in JAX/Flax."""
