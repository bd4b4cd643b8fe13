"""The Bubble Breaker rules (notebooks/bubble_breaker.py), checked on hand-made boards."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))
import bubble_breaker as bb  # noqa: E402


def board(text: str) -> np.ndarray:
    """Rows of digits, top row first; '.' or 0 is empty."""
    return np.array([[0 if ch == "." else int(ch) for ch in line.split()[0]]
                     for line in text.strip().splitlines()], dtype=np.int8)


def test_groups_are_orthogonally_connected_same_colour_cells():
    b = board("""
        112
        212
        121
    """)
    found = sorted(int(mask.sum()) for mask in bb.groups(b))
    assert found == [2, 3]  # the 1s at (0,0),(0,1),(1,1) and the 2s at (0,2),(1,2)
    # diagonal neighbours do not connect: the 2s at (1,0) and (2,1) stay single
    labels, sizes = bb.group_labels(b)
    assert labels[1, 0] != labels[2, 1]


def test_click_removes_group_scores_n_times_n_minus_1_and_gravity_pulls_down():
    b = board("""
        231
        111
        321
    """)
    after, points = bb.click(b, 1, 0)  # the 1-group: (0,2),(1,0),(1,1),(1,2),(2,2) -> 5 cells
    assert points == 5 * 4
    assert after.tolist() == [[0, 0, 0], [2, 3, 0], [3, 2, 0]]


def test_empty_columns_shift_left():
    b = board("""
        1.2
        1.2
        132
    """)
    after, points = bb.click(b, 0, 2)  # remove the column of 2s
    assert points == 6
    assert after.tolist() == [[1, 0, 0], [1, 0, 0], [1, 3, 0]]
    after, points = bb.click(b, 0, 0)  # remove the 1s: column 0 keeps nothing, 3 and the 2s shift left
    assert points == 6
    assert after.tolist() == [[0, 2, 0], [0, 2, 0], [3, 2, 0]]


def test_invalid_clicks_change_nothing():
    b = board("""
        12
        21
    """)
    for r in range(2):
        for c in range(2):
            after, points = bb.click(b, r, c)
            assert points == 0 and after.tolist() == b.tolist()
    empty = board("""
        ..
        11
    """)
    assert bb.click(empty, 0, 0)[1] == 0


def test_terminal_when_no_group_of_two_remains():
    assert not bb.has_moves(board("12\n21"))
    assert bb.has_moves(board("12\n11"))
    assert not bb.has_moves(board("..\n.."))
    assert bb.has_moves(board(".1\n.1"))
    env = bb.BubbleBreakerEnv(rows=2, cols=2, n_colors=2)
    env.reset(options={"board": board("12\n22")})
    _, reward, terminated, truncated, info = env.step(1)  # click (0,1): the three 2s
    assert reward == 6 and terminated and not truncated
    assert info["removed"] == 3 and info["remaining"] == 1


def test_env_step_reports_action_mask_and_truncates_invalid_loops():
    env = bb.BubbleBreakerEnv(rows=2, cols=2, n_colors=2, max_steps=3, invalid_reward=-1.0)
    _, info = env.reset(options={"board": board("11\n21")})
    assert info["action_mask"].tolist() == [1, 1, 0, 1]
    results = [env.step(2) for _ in range(3)]  # the lone 2, three times
    assert [r[1] for r in results] == [-1.0, -1.0, -1.0]
    assert results[-1][3] and not results[-1][2]  # truncated, not terminated


def test_env_follows_gymnasium_api():
    from gymnasium.utils.env_checker import check_env

    env = bb.BubbleBreakerEnv(rows=4, cols=5, n_colors=3)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    assert obs.shape == (4, 5) and (obs == again).all()
    assert set(np.unique(obs)) <= {1, 2, 3}


@pytest.mark.parametrize("seed", range(5))
def test_dynamics_commute_with_colour_permutation(seed):
    rng = np.random.default_rng(seed)
    b = bb.random_board(6, 6, 4, rng)
    for perm in [(2, 1, 3, 4), (4, 3, 2, 1), (3, 1, 4, 2)]:
        pb = bb.permute_colors(b, perm)
        assert bb.has_moves(pb) == bb.has_moves(b)
        for r in range(6):
            for c in range(6):
                after, points = bb.click(b, r, c)
                p_after, p_points = bb.click(pb, r, c)
                assert p_points == points
                assert (p_after == bb.permute_colors(after, perm)).all()


def test_augmentation_adds_every_recolouring_with_the_same_target():
    rng = np.random.default_rng(0)
    boards = bb.random_board(3, 3, 3, rng)[None]
    aug_boards, aug_targets = bb.augment_with_permutations(boards, np.array([2.5]), 3, rng)
    assert len(aug_boards) == 6 and (aug_targets == 2.5).all()
    assert len({b.tobytes() for b in aug_boards}) == 6 or len(np.unique(boards)) < 3
    encoded = bb.encode(aug_boards, 3)
    assert encoded.shape == (6, 3, 3, 3) and (encoded.sum(-1) == 1).all()
    few, _ = bb.augment_with_permutations(boards, np.array([1.0]), 3, rng, copies=2)
    assert len(few) == 2 and (few[0] == boards[0]).all()


def test_zero_value_lookahead_plays_like_greedy():
    """With V = 0 the look-ahead maximises the immediate score, i.e. the largest group."""
    env = bb.BubbleBreakerEnv(rows=5, cols=5, n_colors=3)
    zero = bb.value_policy(lambda x: np.zeros(len(x)), 3, reward_scale=25.0)
    seeds = range(20)
    assert bb.evaluate(env, zero, seeds) == bb.evaluate(env, bb.greedy_policy, seeds)


def test_a_value_that_knows_the_future_beats_random():
    """Sanity check of the look-ahead machinery: a V that prefers boards with big groups left
    scores more than random play."""
    def big_groups_left(x: np.ndarray) -> np.ndarray:
        boards = np.argmax(x, -1) + 1
        boards[x.sum(-1) == 0] = 0
        return np.array([sum(bb.score(int(m.sum())) for m in bb.groups(b)) for b in boards]) / 25.0

    env = bb.BubbleBreakerEnv(rows=5, cols=5, n_colors=3)
    seeds = range(40)
    smart = bb.evaluate(env, bb.value_policy(big_groups_left, 3, 25.0), seeds)
    assert smart > bb.evaluate(env, bb.random_policy, seeds)


def test_render_modes():
    env = bb.BubbleBreakerEnv(rows=2, cols=3, n_colors=2, render_mode="ansi")
    env.reset(options={"board": board("1.2\n122")})
    assert env.render() == "A.B\nABB"
    env.render_mode = "rgb_array"
    assert env.render().shape == (32, 48, 3)
