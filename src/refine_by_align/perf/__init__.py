"""Speed tooling, apart from the quality evaluation: nothing here changes what the pipeline computes.

``ceiling``   the machine's matmul ceiling, median wall times, CPU name, peak memory
``profile``   a U-Net forward's FLOPs and time by operator class, the breakdown and its bound,
              PyTorch's attention by head size
``plot``      the benchmark's picture (where the U-Net's time goes)
``run``       ``refine-by-align bench-speed``: every stage of each config, in its own process, against
              the ceiling; the config names it accepts and the lines it prints
``loadtest``  a bounded load test of a running (or self-started) server

The submodules import torch (all but ``loadtest``); import them by name.
"""
