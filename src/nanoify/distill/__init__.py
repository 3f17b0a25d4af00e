"""Knowledge distillation: pure losses, layer matches as data, and the training loop."""
