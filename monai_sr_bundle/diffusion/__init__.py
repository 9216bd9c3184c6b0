"""Diffusion machinery shared by the diffusion SR methods: noise schedules and samplers behind one interface."""
