"""Training: the trainer and its shared base, callbacks, TRL arguments, and the SFT and distillation stages."""
