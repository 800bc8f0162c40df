"""Test-wide settings: CPU, offline, and the plain LIF loop unless a test asks for the compiled scan
(compiling once per shape would dominate the suite's time)."""

import os

os.environ.setdefault("SPIKETIDE_NO_COMPILE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
