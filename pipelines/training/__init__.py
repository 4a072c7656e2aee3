"""The training engine shared by every model family: DeepSpeed configuration, launch and checkpoints."""
