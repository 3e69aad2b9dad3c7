"""The limiter, gate and AIMD with a fake clock: no sockets, no real sleeping."""

import random

from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.limits import Aimd, TokenBucket
from pipeline.core.retry import Action, ErrorClass, RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def drain(bucket: TokenBucket, clock: Clock, seconds: float, step: float = 0.001) -> int:
    """Take 1 token whenever the bucket allows, for `seconds`; count what passed."""
    passed = 0
    end = clock.t + seconds
    while clock.t < end:
        wait = bucket.take(1)
        if wait <= 0:
            passed += 1
        else:
            clock.t += max(step, wait)
    return passed


def test_rpm_bucket_never_passes_a_minute_at_once() -> None:
    clock = Clock()
    rate = 600 / 60
    bucket = TokenBucket(rate, rate * 1.0, clock)
    first_second = drain(bucket, clock, 1.0)
    assert first_second <= 11  # aiolimiter(600, 60) passes 609 here
    ten = drain(bucket, clock, 9.0) + first_second
    assert 90 <= ten <= 110


@given(st.lists(st.integers(min_value=1, max_value=900), min_size=1, max_size=40))
def test_bucket_long_run_rate_is_bounded(amounts: list[int]) -> None:
    clock = Clock()
    bucket = TokenBucket(1000, 1000, clock)
    for a in amounts:
        while (wait := bucket.take(a)) > 0:
            clock.t += wait
    # debt allowed for one oversize request at most: total <= burst + rate * elapsed + max item
    assert sum(amounts) <= 1000 + 1000 * clock.t + max(amounts)


def test_refund_makes_room_at_once() -> None:
    clock = Clock()
    bucket = TokenBucket(100, 1000, clock, start_full=True)
    assert bucket.take(900) == 0
    assert bucket.take(800) > 0
    bucket.refund(800)  # the call used 100 of the 900 reserved
    assert bucket.take(800) == 0


def test_aimd_lowers_on_429_and_climbs_back_never_above_limit() -> None:
    aimd = Aimd(600.0)
    assert aimd.on_rate_limited(now=10.0, cooldown=5.0)
    assert aimd.current == 600 * 0.7
    assert not aimd.on_rate_limited(now=11.0, cooldown=5.0)  # once per cool-down
    t = 20.0
    for _ in range(100):
        t += 5.0
        aimd.on_quiet(t)
    assert aimd.current == 600.0


def test_retry_policy_classes() -> None:
    policy = RetryPolicy(max_attempts=3)
    rng = random.Random(1)
    assert policy.decide(ErrorClass.STOP, 1, 0, rng).action is Action.STOP
    assert policy.decide(ErrorClass.BLOCKED, 1, 0, rng).action is Action.BLOCK
    assert policy.decide(ErrorClass.BAD_REQUEST, 1, 0, rng).action is Action.FAIL
    assert policy.decide(ErrorClass.TRANSIENT, 2, 0, rng).action is Action.RETRY
    assert policy.decide(ErrorClass.TRANSIENT, 3, 0, rng).action is Action.FAIL
    # 429s do not burn attempts
    assert policy.decide(ErrorClass.RATE_LIMITED, 3, 10, rng).action is Action.RETRY


@given(st.integers(min_value=1, max_value=30), st.integers(min_value=0, max_value=2**32))
def test_backoff_is_capped_and_grows(attempt: int, seed: int) -> None:
    policy = RetryPolicy()
    d = policy.backoff(attempt, random.Random(seed))
    assert 0 < d <= policy.max_delay
    assert d >= min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1)) / 2


def test_a_stray_429_delays_only_its_request_but_an_overrun_slows_everyone() -> None:
    from pipeline.limits import FlowControl

    clock = Clock()
    flow = FlowControl(6000, 0, clock)
    for i in range(300):  # 1 % stray 429s on a busy service, 100 responses a second
        clock.t += 0.01
        limited = i % 100 == 0
        flow.on_response(limited)
        if limited:
            flow.on_rate_limited(1.0)
    assert flow.gate.remaining() == 0 and flow.current_rpm == 6000
    for _ in range(40):  # the key's real quota is far lower: most answers are 429s
        clock.t += 0.01
        flow.on_response(True)
        flow.on_rate_limited(2.0)
    assert flow.gate.remaining() > 1.5
    assert flow.current_rpm is not None and flow.current_rpm < 6000


def test_aimd_climbs_back_in_steps_relative_to_the_current_rate() -> None:
    aimd = Aimd(3000.0)
    t = 0.0
    for _ in range(8):  # the real quota is 300/min: repeated 429s bring the rate down
        t += 10.0
        aimd.on_rate_limited(now=t, cooldown=2.0)
    low = aimd.current
    assert low < 300
    t += 10.0
    aimd.on_quiet(t)
    assert aimd.current - low <= max(30.0, low * 0.05) + 1e-9  # not +150/min at once


def test_a_429_retry_waits_the_servers_delay_without_burning_an_attempt() -> None:
    policy = RetryPolicy(max_attempts=3)
    rng = random.Random(1)
    decision = policy.decide(ErrorClass.RATE_LIMITED, 0, 5, rng, 7.0)
    assert decision.action is Action.RETRY and 7.0 <= decision.delay <= 7.25


def test_pressure_counts_responses_so_slow_jobs_feel_it_too() -> None:
    from pipeline.core.limits import Pressure

    pressure = Pressure()
    for i in range(50):  # one in ten rejected: a quota overrun, whatever the request rate
        pressure.record(i % 10 == 0)
    assert pressure.high()
    stray = Pressure()
    for i in range(500):  # one in a hundred: a busy service, not our quota
        stray.record(i % 100 == 0)
        assert not stray.high()


def test_under_pressure_the_rate_falls_every_5_s_even_with_long_server_delays() -> None:
    aimd = Aimd(3000.0)
    t = 100.0
    steps = 0
    while aimd.current > 300:
        t += 5.0
        assert aimd.on_rate_limited(now=t, cooldown=40.0)
        steps += 1
    assert steps <= 7  # 3000 -> under 300 in about 30 s, not one step per 40 s


def test_accepted_rate_is_the_busiest_minute_of_the_last_few() -> None:
    from pipeline.core.limits import AcceptedRate

    rate = AcceptedRate()
    for i in range(300):  # 300 accepted in the first 10 s, then a quiet gate
        rate.record(i / 30)
    for i in range(50):  # 50 more, 70-75 s in
        rate.record(70 + i / 10)
    assert rate.peak_per_minute() == 300


def test_an_overclaimed_limit_drops_to_the_accepted_rate_and_not_below() -> None:
    aimd = Aimd(3000.0)
    # the key took 300 in its first minute, then refused: the rate drops to just under 300 at
    # once, and 429s that go on until the provider's minute turns over push it no lower
    assert aimd.on_rate_limited(now=10.0, cooldown=2.0, accepted=300)
    assert aimd.current == 294
    assert aimd.on_rate_limited(now=15.0, cooldown=2.0, accepted=300)
    assert aimd.current == 270
    assert not aimd.on_rate_limited(now=20.0, cooldown=2.0, accepted=300)
    assert aimd.current == 270
    # climbing back, it creeps near where the 429s began instead of jumping past it
    t = 20.0
    for _ in range(4):
        t += 5.0
        aimd.on_quiet(t)
    assert 270 < aimd.current < 294 * 1.05
