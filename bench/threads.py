"""Torch threads per task: (1 worker x N threads) against (N workers x 1 thread) on one
training-like load (matmuls, a small conv forward and backward), in worker threads as the flow's
thread pool runs them. Prints each setting's wall and CPU time and the thread count each worker
saw (torch.set_num_threads is per thread for OpenMP: a worker's count is its own).

Usage: python bench/threads.py [--jobs 4]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor

import torch


def job(_: int) -> int:
    """A few seconds of small-model training work; returns this thread's torch thread count."""
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(256, 256, generator=generator)
    conv = torch.nn.Conv2d(16, 32, 3)
    images = torch.randn(64, 16, 16, 16, generator=generator)
    for _ in range(40):
        matrix @ matrix
        conv(images).sum().backward()
    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    jobs = parser.parse_args().jobs
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"cores {cores}, load average {os.getloadavg()[0]:.2f}, main thread {torch.get_num_threads()} threads"
    )
    for workers, threads in ((1, cores), (cores, 1)):
        with ThreadPoolExecutor(
            workers, initializer=torch.set_num_threads, initargs=(threads,)
        ) as pool:
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            seen = set(pool.map(job, range(jobs)))
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        print(
            f"{workers} worker(s) x {threads} thread(s): {jobs} jobs in {wall:.2f} s wall, "
            f"{cpu:.2f} s CPU; threads seen in workers {sorted(seen)}, "
            f"main thread still {torch.get_num_threads()}"
        )
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
