"""Workers of the PRNG seed-analysis cluster.

Plain Python (NumPy, Numba, optional CuPy / torch); imports nothing from Ansible.
"""

__version__ = "0.1.0"
