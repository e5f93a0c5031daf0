"""lcl_jax: Latent Compression Learning pre-training of vision encoders in JAX/Flax."""


def __getattr__(name):
  # Lazy: `import lcl_jax` stays free of jax and flax until the loader is actually used.
  if name == "load_vision_encoder":
    from lcl_jax.export import load_vision_encoder  # pylint: disable=import-outside-toplevel
    return load_vision_encoder
  raise AttributeError(f"module 'lcl_jax' has no attribute {name!r}")


__all__ = ["load_vision_encoder"]
