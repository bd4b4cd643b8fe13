"""Bubble Breaker (SameGame) as a Gymnasium environment, with baseline policies and a learned
value-function agent. Used by notebook 07; the rules are unit-tested in tests/test_bubble_breaker.py.

Board: a (rows, cols) int8 array, row 0 at the top; 0 is empty, colours are 1..n_colors.
Clicking a cell that belongs to a group of >= 2 orthogonally connected cells of one colour removes
the group and scores n * (n - 1); the cells above fall down, and empty columns close up to the
left. The episode ends when no group of two or more is left.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# A value function maps a batch of encoded boards (N, rows, cols, n_colors) to N values.
ValueFn = Callable[[np.ndarray], np.ndarray]
Policy = Callable[[np.ndarray, np.random.Generator], int]

PALETTE = ["#ffffff", "#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#42d4f4"]


# ----------------------------------------------------------------------------- the rules

def random_board(rows: int, cols: int, n_colors: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(1, n_colors + 1, size=(rows, cols)).astype(np.int8)


def group_labels(board: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Label connected same-colour regions: (labels with -1 for empty cells, size of each label)."""
    rows, cols = board.shape
    labels = np.full(board.shape, -1, dtype=np.int32)
    sizes: list[int] = []
    for r0 in range(rows):
        for c0 in range(cols):
            if board[r0, c0] == 0 or labels[r0, c0] >= 0:
                continue
            label, colour = len(sizes), board[r0, c0]
            labels[r0, c0] = label
            stack, size = [(r0, c0)], 0
            while stack:
                r, c = stack.pop()
                size += 1
                for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                    if 0 <= rr < rows and 0 <= cc < cols and labels[rr, cc] < 0 and board[rr, cc] == colour:
                        labels[rr, cc] = label
                        stack.append((rr, cc))
            sizes.append(size)
    return labels, sizes


def groups(board: np.ndarray) -> list[np.ndarray]:
    """The removable groups (>= 2 cells), each as a boolean mask, in reading order of first cell."""
    labels, sizes = group_labels(board)
    return [labels == label for label, size in enumerate(sizes) if size >= 2]


def has_moves(board: np.ndarray) -> bool:
    """True while some cell has an equal, non-empty neighbour (cheaper than labelling)."""
    filled = board != 0
    same_right = filled[:, :-1] & (board[:, :-1] == board[:, 1:])
    same_below = filled[:-1, :] & (board[:-1, :] == board[1:, :])
    return bool(same_right.any() or same_below.any())


def collapse(board: np.ndarray) -> np.ndarray:
    """Gravity (cells fall to the bottom of their column), then empty columns close up leftwards."""
    rows, cols = board.shape
    out = np.zeros_like(board)
    target_col = 0
    for c in range(cols):
        column = board[:, c][board[:, c] != 0]
        if column.size == 0:
            continue
        out[rows - column.size:, target_col] = column
        target_col += 1
    return out


def score(n_removed: int) -> int:
    return n_removed * (n_removed - 1)


def remove(board: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Remove the cells in mask; returns (the collapsed board, the points scored)."""
    cleared = board.copy()
    cleared[mask] = 0
    return collapse(cleared), score(int(mask.sum()))


def click(board: np.ndarray, row: int, col: int) -> tuple[np.ndarray, int]:
    """What clicking (row, col) does: the new board and points; an invalid click changes nothing."""
    if board[row, col] == 0:
        return board.copy(), 0
    labels, sizes = group_labels(board)
    label = labels[row, col]
    if sizes[label] < 2:
        return board.copy(), 0
    return remove(board, labels == label)


def permute_colors(board: np.ndarray, permutation: Sequence[int]) -> np.ndarray:
    """Recolour: colour c becomes permutation[c - 1] (a permutation of 1..n_colors); empty stays 0."""
    lookup = np.concatenate([[0], np.asarray(permutation)]).astype(board.dtype)
    return lookup[board]


def encode(boards: np.ndarray, n_colors: int) -> np.ndarray:
    """One-hot planes (N, rows, cols, n_colors) float32; empty cells are all zeros."""
    boards = np.asarray(boards)
    return (boards[..., None] == np.arange(1, n_colors + 1)).astype(np.float32)


def afterstates(board: np.ndarray) -> tuple[list[int], list[int], list[np.ndarray]]:
    """Every distinct move: (an action index per group, the reward, the board after it)."""
    cols = board.shape[1]
    actions, rewards, boards = [], [], []
    for mask in groups(board):
        r, c = np.argwhere(mask)[0]
        after, points = remove(board, mask)
        actions.append(int(r * cols + c))
        rewards.append(points)
        boards.append(after)
    return actions, rewards, boards


# ----------------------------------------------------------------------------- the environment

class BubbleBreakerEnv(gym.Env):
    """Gymnasium environment. Action = index of the clicked cell (row * cols + col).

    An invalid click (empty cell or single bubble) scores `invalid_reward` and changes nothing;
    `info["action_mask"]` marks the valid clicks. Episodes are truncated after `max_steps`
    so that a policy that keeps clicking invalid cells still ends.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"]}

    def __init__(self, rows: int = 5, cols: int = 5, n_colors: int = 3, invalid_reward: float = 0.0,
                 max_steps: int | None = None, render_mode: str | None = None) -> None:
        if not 1 <= n_colors < len(PALETTE):
            raise ValueError(f"n_colors must be between 1 and {len(PALETTE) - 1}")
        self.rows, self.cols, self.n_colors = rows, cols, n_colors
        self.invalid_reward = invalid_reward
        self.max_steps = max_steps if max_steps is not None else 4 * rows * cols
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, n_colors, shape=(rows, cols), dtype=np.int8)
        self.action_space = spaces.Discrete(rows * cols)
        self.board = np.zeros((rows, cols), dtype=np.int8)
        self.steps = 0

    def _info(self, removed: int = 0) -> dict:
        labels, sizes = group_labels(self.board)
        mask = np.array([label >= 0 and sizes[label] >= 2 for label in labels.ravel()], dtype=np.int8)
        return {"action_mask": mask, "removed": removed, "remaining": int((self.board != 0).sum())}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "board" in options:
            self.board = np.array(options["board"], dtype=np.int8)
        else:
            self.board = random_board(self.rows, self.cols, self.n_colors, self.np_random)
        self.steps = 0
        return self.board.copy(), self._info()

    def step(self, action: int):
        row, col = divmod(int(action), self.cols)
        before = int((self.board != 0).sum())
        self.board, points = click(self.board, row, col)
        removed = before - int((self.board != 0).sum())
        self.steps += 1
        reward = float(points) if removed else self.invalid_reward
        terminated = not has_moves(self.board)
        truncated = not terminated and self.steps >= self.max_steps
        return self.board.copy(), reward, terminated, truncated, self._info(removed)

    def render(self):
        if self.render_mode == "ansi":
            symbols = ".ABCDEFG"
            return "\n".join("".join(symbols[v] for v in row) for row in self.board)
        if self.render_mode == "rgb_array":
            rgb = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in PALETTE], dtype=np.uint8)
            return np.kron(rgb[self.board], np.ones((16, 16, 1), dtype=np.uint8))
        return None


def draw_board(board: np.ndarray, ax=None, title: str | None = None, highlight: np.ndarray | None = None):
    """Draw the board as coloured bubbles with matplotlib; highlight = a mask to outline."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(0.5 * board.shape[1] + 1, 0.5 * board.shape[0] + 1))
    rows, cols = board.shape
    ax.set_facecolor("#f4f4f4")
    for r in range(rows):
        for c in range(cols):
            if board[r, c]:
                edge = "black" if highlight is not None and highlight[r, c] else "none"
                ax.add_patch(plt.Circle((c, rows - 1 - r), 0.42, color=PALETTE[board[r, c]], ec=edge, lw=2.5))
    ax.set_xlim(-0.6, cols - 0.4)
    ax.set_ylim(-0.6, rows - 0.4)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


# ----------------------------------------------------------------------------- policies

def random_policy(board: np.ndarray, rng: np.random.Generator) -> int:
    """Baseline: a uniformly random removable group."""
    actions, _, _ = afterstates(board)
    return actions[int(rng.integers(len(actions)))]


def greedy_policy(board: np.ndarray, rng: np.random.Generator) -> int:
    """Baseline: always the largest group (the biggest immediate score); ties at random."""
    actions, rewards, _ = afterstates(board)
    best = np.flatnonzero(np.asarray(rewards) == max(rewards))
    return actions[int(rng.choice(best))]


def lookahead_action(board: np.ndarray, value_fn: ValueFn, n_colors: int, reward_scale: float,
                     rng: np.random.Generator, epsilon: float = 0.0) -> tuple[int, np.ndarray]:
    """One-step look-ahead: the move maximising reward + V(board after it); returns (action, after).

    V is learned in units of reward / reward_scale; a board without moves is worth 0.
    """
    actions, rewards, boards = afterstates(board)
    if epsilon and rng.random() < epsilon:
        i = int(rng.integers(len(actions)))
        return actions[i], boards[i]
    values = np.asarray(value_fn(encode(np.stack(boards), n_colors))).reshape(-1)
    values = np.where([has_moves(b) for b in boards], values, 0.0)
    totals = np.asarray(rewards) / reward_scale + values
    best = np.flatnonzero(totals >= totals.max() - 1e-9)
    i = int(rng.choice(best))
    return actions[i], boards[i]


def value_policy(value_fn: ValueFn, n_colors: int, reward_scale: float) -> Policy:
    def policy(board: np.ndarray, rng: np.random.Generator) -> int:
        return lookahead_action(board, value_fn, n_colors, reward_scale, rng)[0]
    return policy


def play(env: BubbleBreakerEnv, policy: Policy, seed: int, rng: np.random.Generator) -> float:
    """One episode from the board reset(seed) makes; returns the total score."""
    board, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        board, reward, terminated, truncated, _ = env.step(policy(board, rng))
        total += reward
        done = terminated or truncated
    return total


def evaluate(env: BubbleBreakerEnv, policy: Policy, seeds: Sequence[int], rng_seed: int = 0) -> float:
    """Mean score over fixed boards, so policies are compared on the same games."""
    rng = np.random.default_rng(rng_seed)
    return float(np.mean([play(env, policy, seed, rng) for seed in seeds]))


# ----------------------------------------------------------------------------- learning

def color_permutations(n_colors: int) -> list[tuple[int, ...]]:
    return list(itertools.permutations(range(1, n_colors + 1)))


def augment_with_permutations(boards: np.ndarray, targets: np.ndarray, n_colors: int,
                              rng: np.random.Generator, copies: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The game does not care which colour is which, so every recolouring of a board is worth the
    same: add recoloured copies (all permutations, or `copies` random ones) with the same target."""
    perms = color_permutations(n_colors)
    if copies is not None and copies < len(perms):
        # keep the original colouring and add copies - 1 random recolourings
        others = rng.choice(np.arange(1, len(perms)), max(copies - 1, 0), replace=False)
        perms = [perms[0]] + [perms[i] for i in others]
    all_boards = np.concatenate([permute_colors(boards, p) for p in perms])
    all_targets = np.concatenate([targets] * len(perms))
    return all_boards, all_targets


def build_value_model(rows: int, cols: int, n_colors: int, filters: int = 32, hidden: int = 64,
                      learning_rate: float = 1e-3):
    """A small CNN: one-hot board -> expected future score (in units of reward_scale)."""
    import keras

    model = keras.Sequential([
        keras.Input((rows, cols, n_colors)),
        keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    return model


def keras_value_fn(model) -> ValueFn:
    """predict_on_batch runs the model's compiled predict step: for the tiny batches of a look-ahead
    it is several times faster than an eager model(x) call, and has none of predict()'s overhead."""
    def value_fn(x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(x)).reshape(-1)
    return value_fn


def collect_episodes(env: BubbleBreakerEnv, value_fn: ValueFn, episodes: int, epsilon: float,
                     reward_scale: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Play epsilon-greedy look-ahead episodes; return every afterstate visited and the score that
    followed it (Monte Carlo target, in units of reward_scale)."""
    boards, targets = [], []
    for _ in range(episodes):
        board, _ = env.reset(seed=int(rng.integers(2**31)))
        visited, rewards_after = [], []
        done = False
        while not done:
            action, after = lookahead_action(board, value_fn, env.n_colors, reward_scale, rng, epsilon)
            board, reward, terminated, truncated, _ = env.step(action)
            visited.append(after)
            rewards_after.append(reward)
            done = terminated or truncated
        future = np.cumsum(rewards_after[::-1])[::-1]  # future[i] includes the reward of move i
        for i, after in enumerate(visited):
            boards.append(after)
            targets.append((future[i] - rewards_after[i]) / reward_scale)
    return np.stack(boards), np.asarray(targets, dtype=np.float32)


@dataclass
class TrainingLog:
    iteration: list[int] = field(default_factory=list)
    episodes: list[int] = field(default_factory=list)
    agent_score: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)


def train_value_agent(env: BubbleBreakerEnv, model, iterations: int, episodes_per_iteration: int,
                      eval_seeds: Sequence[int], epsilon: float = 0.1, epochs: int = 3,
                      augment: bool = True, replay_size: int = 20000, seed: int = 0,
                      reward_scale: float | None = None, progress: Callable[[str], None] | None = print,
                      ) -> TrainingLog:
    """Approximate policy iteration: play with the current look-ahead policy, fit V to the scores
    that followed each afterstate (with colour-permuted copies), repeat; evaluate after each round."""
    rng = np.random.default_rng(seed)
    scale = reward_scale or float(env.rows * env.cols)
    value_fn = keras_value_fn(model)
    replay_boards = np.zeros((0, env.rows, env.cols), dtype=np.int8)
    replay_targets = np.zeros((0,), dtype=np.float32)
    log = TrainingLog()
    for iteration in range(1, iterations + 1):
        boards, targets = collect_episodes(env, value_fn, episodes_per_iteration, epsilon, scale, rng)
        if augment:
            boards, targets = augment_with_permutations(boards, targets, env.n_colors, rng)
        replay_boards = np.concatenate([replay_boards, boards])[-replay_size:]
        replay_targets = np.concatenate([replay_targets, targets])[-replay_size:]
        history = model.fit(encode(replay_boards, env.n_colors), replay_targets, epochs=epochs,
                            batch_size=64, verbose=0, shuffle=True)
        mean_score = evaluate(env, value_policy(value_fn, env.n_colors, scale), eval_seeds, rng_seed=iteration)
        log.iteration.append(iteration)
        log.episodes.append(iteration * episodes_per_iteration)
        log.agent_score.append(mean_score)
        log.loss.append(float(history.history["loss"][-1]))
        if progress:
            progress(f"iteration {iteration}/{iterations}: {iteration * episodes_per_iteration} episodes, "
                     f"loss {log.loss[-1]:.3f}, mean score {mean_score:.1f}")
    return log
