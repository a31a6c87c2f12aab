"""Downcity: an AI infrastructure runtime on Ray."""
