import pytest

from pythia_dynamics.schedule import (
    PYTHIA_STEPS,
    PYTHIA_V0_STEPS,
    StepSelectionError,
    describe_schedule,
    pythia_like_schedule,
    select_steps,
)


def test_pythia_schedule_matches_transformer_lens_list():
    loading = pytest.importorskip("transformer_lens.loading_from_pretrained", reason="TransformerLens 4 has no list")
    assert PYTHIA_STEPS == loading.PYTHIA_CHECKPOINTS
    assert PYTHIA_V0_STEPS == loading.PYTHIA_V0_CHECKPOINTS


def test_pythia_schedule_shape():
    assert len(PYTHIA_STEPS) == 154 and len(PYTHIA_V0_STEPS) == 143
    assert PYTHIA_STEPS[:11] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert PYTHIA_STEPS[11:] == PYTHIA_V0_STEPS


def test_pythia_like_schedule_for_a_short_run():
    assert pythia_like_schedule(1200, 30) == [0, 1, 2, 4, 8, 16, 32] + list(range(40, 1201, 40))
    with pytest.raises(ValueError, match="multiple"):
        pythia_like_schedule(1000, 30)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("1000", [1000]),
        ("0,1,143000", [0, 1, 143000]),
        ("0:4000:1000", [0, 1000, 2000, 3000, 4000]),
        ("0:8", [0, 1, 2, 4, 8]),
        ("140000:", [140000, 141000, 142000, 143000]),
        ("first", [0]),
        ("first:3", [0, 1, 2]),
        ("last:2", [142000, 143000]),
        ("first,last", [0, 143000]),
        ("0:512:256,last", [0, 256, 512, 143000]),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_select_steps(spec, expected):
    assert select_steps(spec, PYTHIA_STEPS) == expected


def test_every_nth_keeps_the_final_checkpoint():
    steps = select_steps("every:50", PYTHIA_STEPS)
    assert steps == [PYTHIA_STEPS[0], PYTHIA_STEPS[50], PYTHIA_STEPS[100], PYTHIA_STEPS[150], 143000]


def test_log_spaced_spans_the_run_evenly_in_log_step():
    steps = select_steps("log:8", PYTHIA_STEPS)
    assert steps[0] == 0 and steps[-1] == 143000 and len(steps) == 8
    import math

    gaps = [math.log1p(b) - math.log1p(a) for a, b in zip(steps, steps[1:])]
    assert max(gaps) < 2 * min(gaps)


def test_none_and_all_select_everything_and_lists_are_checked():
    assert select_steps(None, PYTHIA_STEPS) == PYTHIA_STEPS == select_steps("all", PYTHIA_STEPS)
    assert select_steps([2000, 1000, 1000], PYTHIA_STEPS) == [1000, 2000]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("1500", r"1500 not in this schedule; valid steps: 0, 1, 2, 4, \.\.\., 512, 1000, 2000, \.\.\., 143000"),
        ([3, 1000], "3 not in this schedule"),
        ("200000:300000", "selects no checkpoint"),
        ("0:100:0", "stride must be positive"),
        ("every", "needs a positive count"),
        ("log:0", "needs a positive count"),
        ("first:0", "needs a positive count"),
        ("steps 5", "cannot read step spec term"),
        ("1000,,2000", "empty term"),
    ],
)
def test_bad_specs_say_what_is_valid(spec, message):
    with pytest.raises(StepSelectionError, match=message):
        select_steps(spec, PYTHIA_STEPS)


def test_describe_schedule():
    assert describe_schedule(PYTHIA_STEPS) == "0, 1, 2, 4, ..., 512, 1000, 2000, ..., 143000 (154 checkpoints)"
    assert describe_schedule([0, 5, 10]) == "0, 5, 10 (3 checkpoints)"


TOKENS = {0: 0, 1000: 4 * 10**9, 2000: 8 * 10**9, 3000: 12 * 10**9}


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("tokens:4B-8B", [1000, 2000]),
        ("tokens:4000M-8e", None),  # not a count: an error
        ("tokens:-4B", [0, 1000]),
        ("tokens:9B-", [3000]),
        ("tokens:5B", [2000]),  # the first checkpoint that has seen at least 5B
        ("tokens:0.004T-0.004T,last", [1000, 3000]),
        ("first,tokens:12B", [0, 3000]),
    ],
)
def test_select_by_tokens_seen(spec, expected):
    if expected is None:
        with pytest.raises(StepSelectionError, match="cannot read token count '8e'"):
            select_steps(spec, list(TOKENS), TOKENS)
    else:
        assert select_steps(spec, list(TOKENS), TOKENS) == expected


def test_tokens_terms_need_known_tokens_and_say_the_range():
    with pytest.raises(StepSelectionError, match="does not say how many tokens"):
        select_steps("tokens:1B-", PYTHIA_STEPS)
    with pytest.raises(StepSelectionError, match="no checkpoint has seen 20B tokens; the last has seen 12B"):
        select_steps("tokens:20B", list(TOKENS), TOKENS)
    assert select_steps("tokens:4B-4B", [0, 1000, 2000, 3000, 4000], TOKENS) == [1000]  # 4000's count unknown
