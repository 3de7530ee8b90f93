"""The byte-bounded LRU behind the prefix-state and DARE-draw caches."""

import threading

import pytest

from merge_env.lru import ByteLRU


def test_evicts_least_recent_until_within_bound():
    lru = ByteLRU(30)
    for key in "abc":
        assert lru.put(key, key.upper(), 10)
    assert lru.get("a") == "A"  # now the most recent: b goes first
    lru.put("d", "D", 10)
    assert "b" not in lru and {"a", "c", "d"} <= {k for k in "abcd" if k in lru}
    assert lru.bytes == 30 and lru.evictions == 1
    assert lru.get("b") is None and (lru.hits, lru.misses) == (1, 1)
    lru.put("e", "E", 25)  # makes room for itself: three go
    assert len(lru) == 1 and lru.bytes == 25 and lru.evictions == 4


def test_replacing_a_key_counts_its_new_size_once():
    lru = ByteLRU(100)
    lru.put("k", 1, 40)
    lru.put("k", 2, 30)
    assert lru.get("k") == 2 and lru.bytes == 30 and len(lru) == 1


def test_too_large_or_zero_bound_keeps_nothing():
    assert not ByteLRU(0).put("k", 1, 1)
    lru = ByteLRU(10)
    lru.put("a", 1, 5)
    assert not lru.put("big", 2, 11)
    assert "big" not in lru and lru.get("a") == 1 and lru.evictions == 0
    lru.clear()
    assert len(lru) == 0 and lru.bytes == 0 and lru.get("a") is None


def test_negative_bound_is_refused_by_name():
    with pytest.raises(ValueError, match="DARE draws: max_bytes must be >= 0"):
        ByteLRU(-1, what="DARE draws")


def test_threads_keep_the_byte_count_exact():
    lru = ByteLRU(50 * 8)

    def work(offset: int) -> None:
        for i in range(2000):
            lru.put((offset, i % 97), i, 8)
            lru.get((offset, (i * 7) % 97))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lru.bytes == 8 * len(lru) <= lru.max_bytes
