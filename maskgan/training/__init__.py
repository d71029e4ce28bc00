"""Training: one step module per stage, the stage-agnostic loop, checkpoints and the Ray Train glue.

Nothing is imported here: `maskgan.models.official` imports `maskgan.training.checkpoint`, and Ray Data
workers must not pay for the stage modules.
"""
