"""The paper's optimiser (docs/method.md section 5): AdamW (0.9, 0.95) with a weight-decay mask, linear warm-up then
cosine decay, optional global-norm clipping (off in the paper)."""
import jax
import optax

# Weight decay applies only to these leaves: matrices of dense layers and token embeddings. Biases, LayerNorm and
# layer-scale scales, position embeddings, the pooling query and the logit scale are left alone.
_DECAYED_LEAVES = ("kernel", "embedding")


def decay_mask(params):
  """A tree of bools: True where weight decay applies. Works on plain and on logically boxed params (whose
  paths end in the box's `.value`), so the optimizer state can be initialised from boxed params."""
  def decayed(path, _):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return bool(names) and names[-1] in _DECAYED_LEAVES
  return jax.tree_util.tree_map_with_path(decayed, params)


def learning_rate_schedule(optim_config):
  """Linear warm-up from 0 to peak, then cosine decay to peak * end_lr_ratio at total_steps."""
  c = optim_config
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=c.peak_lr, warmup_steps=c.warmup_steps,
      decay_steps=max(c.total_steps, c.warmup_steps + 1), end_value=c.peak_lr * c.end_lr_ratio)


def make_optimizer(optim_config):
  """optax chain: clip by global norm -> AdamW with masked decay, scheduled."""
  c = optim_config
  return optax.chain(
      optax.clip_by_global_norm(c.grad_clip_norm) if c.grad_clip_norm else optax.identity(),
      optax.adamw(learning_rate_schedule(c), b1=c.b1, b2=c.b2, eps=c.eps,
                  weight_decay=c.weight_decay, mask=decay_mask))


def schedule_count(opt_state):
  """The count the learning-rate schedule of make_optimizer reads: the optimizer's own, which a skipped
  (non-finite) step does not advance, unlike the train state's step."""
  states = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
            if isinstance(s, optax.ScaleByScheduleState)]
  if len(states) != 1:
    raise ValueError(f"expected one learning-rate schedule in the optimizer state, found {len(states)}")
  return states[0].count
