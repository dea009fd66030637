"""Self-feedback: trajectories, critic, preference pairs, DPO, adapter registry and promotion."""
