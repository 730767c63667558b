"""Models and training: backbones, DeepSpeed pretraining, checkpoints, fine-tuning, launch, the study, the CLI."""
