"""Training: one step module per stage (mask_vae, dmn, ebst), the stage-agnostic loop, Ray glue."""
