"""The Theory lab: measurements that check Yin et al. (2024) and Leviathan et al. (2023) on a loaded pair, and a toy."""
