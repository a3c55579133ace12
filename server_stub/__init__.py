"""Scaffolding the course builds on: the handler contract, the course model and a runner."""
