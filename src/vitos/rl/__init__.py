"""Reinforcement learning for ViToS: GRPO maths, rewards, rollouts and the training loop."""
