import jax
import jax.numpy as jnp
import optax
from flax import nnx
from roxxel.checkpoint import Checkpointer

# 1. Initialize Flax NNX model and optimizer
class SimpleModel(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(10, 5, rngs=rngs)
    def __call__(self, x):
        return self.linear(x)

rngs = nnx.Rngs(42)
model = SimpleModel(rngs)
tx = optax.adam(1e-3)
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

# 2. Instantiate the Checkpointer
checkpointer = Checkpointer(
    checkpoint_path="./checkpoints",
    model=model,
    optimizer=optimizer,
    max_to_keep=3
)

# 3. Restore existing checkpoint if present
start_step = checkpointer.restore()
print(f"Resumed from step: {start_step}")

# 4. Training Loop
for step in range(start_step, 1000):
    # Train step...
    loss_val = 0.52

    # Save asynchronously (does not block JAX compilation or execution)
    if step % 100 == 0:
        checkpointer.save(
            step=step,
            metrics_dict={"loss": loss_val}
        )
