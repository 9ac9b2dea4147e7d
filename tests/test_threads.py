"""threads.side_by_side: the jobs' results in their order, on several threads where allowed."""

import threading

from refine_by_align import threads


def test_side_by_side_keeps_the_order_and_uses_the_threads_allowed(monkeypatch):
    jobs = list(range(6))
    ran_on, gate = [], threading.Barrier(2, timeout=10)

    def work(job):
        if job < 2:  # the first two jobs wait for each other: they finish only if they run at once
            gate.wait()
        ran_on.append(threading.current_thread() is threading.main_thread())
        return job * job

    monkeypatch.setattr(threads, "worker_threads", lambda: 2)
    assert threads.side_by_side(work, jobs) == [j * j for j in jobs]
    assert not any(ran_on)  # (on the pool's threads)
    ran_on.clear()
    monkeypatch.setattr(threads, "worker_threads", lambda: 1)
    assert threads.side_by_side(lambda j: (ran_on.append(threading.current_thread() is threading.main_thread()), -j)[1], jobs) == [-j for j in jobs]
    assert all(ran_on) and len(ran_on) == len(jobs)  # one after another, in the caller's thread
    assert threads.side_by_side(work, []) == []
