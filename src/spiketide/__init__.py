"""spiketide: temporal information dynamics of spiking neural networks.

Implements Kim et al., "Exploring Temporal Information Dynamics in Spiking Neural
Networks" (AAAI 2023): LIF SNNs trained with BPTT (Eq. 1-2), the temporal Fisher
information trace and its centroid (Eq. 3-7), the Fisher-controlling alpha-loss
(Eq. 9-10), robustness evaluation (Table 1) and TIC-based pruning (Fig. 6-7).
"""

__version__ = "0.1.0"

from spiketide.errors import SpiketideError  # noqa: E402

__all__ = ["SpiketideError", "__version__"]
