"""``python -m mv2mae.cli`` (what ``torchrun -m mv2mae.cli`` runs on every rank)."""

from mv2mae.cli import main

main()
