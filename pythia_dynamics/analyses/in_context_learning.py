"""In-context learning: loss by position in the context, and loss on repeated random tokens.

Component `model`. On the sweep's evaluation batch (n sequences of `n_pos` tokens, shared forward
pass), `loss[t]` is the mean over sequences of the cross-entropy of predicting the token at position
t from positions < t, t = 1..n_pos-1:
- array `loss_by_position`: `loss[1..n_pos-1]` (nats), element i is token position i + 1;
- `icl_score` = mean `loss[t]` over the late window minus mean `loss[t]` over the early window, as
  Olsson et al. (2022) compare the 500th and 50th tokens of a 512-token context, with the windows
  scaled to the context: early t in [round(40/512 n_pos), round(60/512 n_pos)), late t in
  [round(490/512 n_pos), n_pos) (for 128 tokens: 10..14 and 122..127; for 2048: 160..239 and
  1960..2047). A window rather than one position, because an evaluation batch has few sequences.
  Negative: later tokens are predicted better, the model learns in context. The stats
  `icl_early_position` / `icl_late_position` record the windows' first positions, `early_loss` /
  `late_loss` their mean losses.

On the fixed batch of repeated random sequences `[BOS] r r` of `pythia_dynamics.repeated_tokens` (T
ids, first copy at 1..T, second at T+1..2T), run in one small forward pass that `head_scores` shares
(`pythia_dynamics.passes.repeated_pass`):
- `repeat_first_copy_loss`: mean loss of predicting positions 2..T (the first copy, after its first token);
- `repeat_second_copy_loss`: mean loss of predicting positions T+2..2T (the same tokens, seen before);
- `repeat_loss_drop` = first minus second copy loss: how much having seen the sequence helps
  (about 0 without induction; up to the first copy's loss, ~ln(vocabulary), with perfect copying).
Both leave out each copy's first token, whose predecessor is BOS or the other copy's last token.
"""

from __future__ import annotations

from einops import reduce
from torch import Tensor

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.passes import BatchTotals, ChunkPasses, RepeatedPass, shared_repeated_pass
from pythia_dynamics.records import RecordBuilder, Records

__all__ = ["InContextLearning", "icl_windows"]

EARLY_WINDOW = (40 / 512, 60 / 512)
LATE_START = 490 / 512


def icl_windows(n_pos: int) -> tuple[range, range]:
    """The early and late windows of token positions t (see the module docstring)."""
    early = range(max(1, round(EARLY_WINDOW[0] * n_pos)), max(2, round(EARLY_WINDOW[1] * n_pos)))
    late = range(min(n_pos - 1, round(LATE_START * n_pos)), n_pos)
    return early, late


@register("in_context_learning", needs="forward")
class InContextLearning:
    """Loss by position on the evaluation batch, the in-context-learning score, loss on repeated random tokens."""

    hooks: list[str] = []

    def __init__(self, model):
        self.model = model
        self.loss_sum: Tensor | None = None
        self.n_sequences = 0

    def update(self, chunk: ChunkPasses) -> None:
        loss = reduce(chunk.token_loss.double(), "batch pred -> pred", "sum").cpu()  # the shared pass's own
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.n_sequences += chunk.tokens.shape[0]

    def finish(self, totals: BatchTotals) -> Records:
        records = RecordBuilder()
        by_position = self.loss_sum / self.n_sequences  # element i is token position i + 1
        early, late = icl_windows(len(by_position) + 1)
        early_loss = by_position[early.start - 1 : early.stop - 1].mean().item()
        late_loss = by_position[late.start - 1 : late.stop - 1].mean().item()
        records.array("model", "loss_by_position", by_position)
        records.scalar("model", "icl_score", late_loss - early_loss)
        records.scalar("model", "early_loss", early_loss)
        records.scalar("model", "late_loss", late_loss)
        records.scalar("model", "icl_early_position", early.start)
        records.scalar("model", "icl_late_position", late.start)
        first, second = self._repeat_losses(shared_repeated_pass(totals, self.model))
        records.scalar("model", "repeat_first_copy_loss", first)
        records.scalar("model", "repeat_second_copy_loss", second)
        records.scalar("model", "repeat_loss_drop", first - second)
        return records.build()

    @staticmethod
    def _repeat_losses(repeated: RepeatedPass) -> tuple[float, float]:
        loss = repeated.token_loss  # column t - 1 predicts position t
        T = repeated.batch.repeat_len
        first = loss[:, 1:T].mean().item()  # positions 2..T
        second = loss[:, T + 1 : 2 * T].mean().item()  # positions T+2..2T
        return first, second
