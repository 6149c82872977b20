"""Stripe layout: any m losses leave every stripe decodable; parity memory is m/(g-m)."""

from __future__ import annotations

import itertools

import pytest

from smp.layout import Layout, LayoutError, check_redundancy, chunk_range, chunk_size


@pytest.mark.parametrize("placement", ["consecutive", "strided"])
@pytest.mark.parametrize(
    ("nodes", "g", "m"),
    [(4, 4, 1), (4, 4, 2), (8, 4, 1), (7, 3, 1), (10, 4, 2), (5, 5, 3), (2, 2, 1)],
)
def test_any_m_losses_leave_k_cells_in_every_stripe(
    nodes: int, g: int, m: int, placement: str
) -> None:
    layout = Layout.for_job(nodes, g, m, placement)
    assert sorted(n for grp in layout.groups for n in grp.members) == list(range(nodes))
    for group in layout.groups:
        assert group.size in (g, g + 1)
        for node in group.members:
            assert len(group.data_stripes(node)) == group.k  # every chunk has a stripe
            assert len(group.parity_cells(node)) == m  # parity memory m/k of the data
        for stripe in range(group.size):
            cells = [group.cell_owner(stripe, i) for i in range(group.size)]
            assert sorted(cells) == sorted(group.members)
            assert all(group.cell_index(stripe, n) == i for i, n in enumerate(cells))
        for lost in itertools.combinations(group.members, m):
            for stripe in range(group.size):
                alive = [group.cell_owner(stripe, i) not in lost for i in range(group.size)]
                assert sum(alive) >= group.k  # every stripe decodable after any m losses


def test_placement_and_remainder() -> None:
    assert [g.members for g in Layout(8, 4, 1).groups] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [g.members for g in Layout(8, 4, 1, "strided").groups] == [(0, 2, 4, 6), (1, 3, 5, 7)]
    assert [g.members for g in Layout(10, 4, 1).groups] == [(0, 1, 2, 3, 8), (4, 5, 6, 7, 9)]
    assert Layout.for_job(3, 4, 1).group_size == 3


def test_parity_memory_fraction() -> None:
    group = Layout(4, 4, 1).groups[0]
    blob = 3 * 1000 * 64
    per_chunk = chunk_size(blob, group.k)
    assert per_chunk * group.parity / blob == pytest.approx(group.parity / (group.size - 1))


def test_chunks_cover_the_blob() -> None:
    for blob, k in [(0, 3), (1, 3), (1000, 3), (64 * 3, 3), (10**6 + 7, 5)]:
        ranges = [chunk_range(blob, k, i) for i in range(k)]
        assert ranges[0][0] == 0 and ranges[-1][1] == blob
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((4, 4, 0), "at least 1"),
        ((4, 4, 4), "below"),
        ((4, 1, 1), "out of range"),
        ((4, 4, 1, "x"), "unknown"),
        ((4, 5, 1), "exceeds"),
        ((300, 300, 1), "2 to 255 nodes"),
        ((0, 4, 1), "1 to 65536 nodes"),
        ((1 << 20, 4, 1), "1 to 65536 nodes"),
        ((509, 255, 1), "make a group of 509"),
    ],
)
def test_invalid_settings(args: tuple[int, ...], words: str) -> None:
    with pytest.raises(LayoutError, match=words):
        Layout(*args)  # type: ignore[arg-type]


def test_settings_are_checked_whatever_the_node_count() -> None:
    """What the user gave is refused at once, not when the job first runs on enough nodes."""
    for group, parity in ((256, 1), (4, 4), (1, 0)):
        with pytest.raises(LayoutError):
            check_redundancy(group, parity)
        with pytest.raises(LayoutError):
            Layout.for_job(3, group, parity)
    check_redundancy(255, 254)


def test_single_node_has_no_parity() -> None:
    layout = Layout.for_job(1, 4, 1)
    assert not layout.protected and "not covered" in layout.describe()
