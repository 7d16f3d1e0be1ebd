"""Platform adapters: batch schedulers, MPI launch lines, compute nodes, transfers, and machine presets.

This package imports nothing else of Balsam's except ``balsam.exceptions``: it is the bottom layer.
"""
