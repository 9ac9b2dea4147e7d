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


def test_torch_threads_is_the_calling_threads_own_setting_and_restored():
    """torch_threads(1) runs a block single-threaded on one thread while another thread keeps
    torch's setting (OpenMP's per-thread setting), and the setting is restored after it."""
    import torch

    before = torch.get_num_threads()
    inside, checked, seen = threading.Event(), threading.Event(), {}

    def other():
        with threads.torch_threads(1):
            seen["inside"] = torch.get_num_threads()
            inside.set()
            checked.wait(10)
        seen["after"] = torch.get_num_threads()

    t = threading.Thread(target=other)
    t.start()
    assert inside.wait(10), "hung"
    main_meanwhile = torch.get_num_threads()  # while the other thread is in its block
    checked.set()
    t.join(10)
    assert seen["inside"] == 1 and main_meanwhile == before and torch.get_num_threads() == before
    with threads.torch_threads(None):
        assert torch.get_num_threads() == before  # None: as set
    try:
        with threads.torch_threads(1):
            assert torch.get_num_threads() == 1
            raise ValueError("inside")
    except ValueError:
        pass
    assert torch.get_num_threads() == before  # restored after an error too
