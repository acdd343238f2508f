"""Verify, then act: the world state, the allow list of actions, the verifier, the executor."""
