"""Torch threads per task: (1 worker x N threads) against (N workers x 1 thread) on one
training-like load (matmuls, a small conv forward and backward), in worker threads as the flow's
thread pool runs them. Prints each setting's wall and CPU time and the thread count each worker
saw (torch.set_num_threads is per thread for OpenMP: a worker's count is its own).

Then the latency fault the costs stage avoids: batch-1 forward passes of the default model timed
in this thread with all cores' threads, before any worker ran, after a worker thread trained
with all cores' threads (its pool alive), and after that pool's threads ended
(flows.runtime.retire_workers). Median milliseconds and the voluntary context switches per pass
(libgomp puts idle team threads to sleep and wakes them at each parallel region once more
threads have run teams than there are cores: the switches count it, whatever the load).

Usage: python bench/threads.py [--jobs 4] [--passes 400]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
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


def batch_one_latency(model: torch.nn.Module, example: torch.Tensor, passes: int) -> str:
    """Median ms of `passes` forward passes of `example` in this thread, and the process's
    voluntary context switches per pass."""
    with torch.inference_mode():
        for _ in range(20):
            model(example)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        times = []
        for _ in range(passes):
            start = time.perf_counter()
            model(example)
            times.append(time.perf_counter() - start)
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before
    return f"{statistics.median(times) * 1e3:.3f} ms, {switches / passes:.1f} switches a pass"


def latency_after_workers(cores: int, passes: int) -> None:
    """The costs stage's batch-1 latency in the flow's thread: before any worker ran, after a
    worker thread trained with `cores` threads, and after the pool's threads ended."""
    from compalign.costs import deployable
    from compalign.models import build_model

    torch.set_num_threads(cores)
    model = deployable(build_model("small_cnn", 10, 1, 8, seed=0).eval())
    example = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    print(f"batch-1 latency of small_cnn (8x8) in this thread, {cores} threads:")
    print(f"  {'before any worker:':<32}{batch_one_latency(model, example, passes)}")
    pool = ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(cores,))
    pool.submit(job, 0).result()
    alive = f"a {cores}-thread worker alive:"
    print(f"  {alive:<32}{batch_one_latency(model, example, passes)}")
    pool.shutdown(wait=True)
    print(f"  {'its thread ended (retired):':<32}{batch_one_latency(model, example, passes)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--passes", type=int, default=400)
    arguments = parser.parse_args()
    jobs = arguments.jobs
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
    latency_after_workers(cores, arguments.passes)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
