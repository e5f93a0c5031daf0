"""The one logical-axis vocabulary of lcl_jax. Imports nothing.

Weights use the plain names; activations the `act_` names. The config's
`sharding.rules` map each name to mesh axes (`data`, `fsdp`, `tensor`) or None.
"""

# Weights.
EMBED = "embed"          # model width (ViT D_v, decoder D_lm, contrastive D_e)
MLP = "mlp"              # MLP hidden width
HEADS = "heads"          # attention heads
HEAD_DIM = "head_dim"    # per-head width
KV = "kv"                # the other side of a cross-width map (ViT -> decoder, decoder -> D_e, cross-attn keys)
VOCAB = "vocab"          # token vocabulary
PATCH = "patch"          # flattened patch pixels (p * p * 3)
POSITIONS = "positions"  # learned position tables
LAYERS = "layers"        # stacked layers (scan), if used
NORM = "norm"            # LayerNorm scale / bias (never sharded)

# Activations.
ACT_BATCH = "act_batch"      # rows of token sequences
ACT_IMAGES = "act_images"    # image slots
ACT_SEQ = "act_seq"          # token positions
ACT_PATCHES = "act_patches"  # patches of one image
ACT_EMBED = "act_embed"
ACT_MLP = "act_mlp"
ACT_HEADS = "act_heads"
ACT_VOCAB = "act_vocab"

# The data-parallel mesh axes: batch dimensions split over both.
DATA_AXES = ("data", "fsdp")
MESH_AXES = ("data", "fsdp", "tensor")
