"""Models: loading and tiny models (`loading`), recipe references (`refs`), forwards at label positions (`label_forward`), checkpoint files on disk (`checkpoints`)."""
