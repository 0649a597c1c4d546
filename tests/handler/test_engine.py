"""The continuous-batching engine: rows join and leave a running batch without changing their tokens,
short requests overtake long ones, long prompts are prefilled in chunks, and overload is an error."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from lora_endpoint.contract.errors import ContextLengthExceeded, ModelOverloaded
from lora_endpoint.handler.engine import Engine, EngineLimits
from lora_endpoint.handler.generation import Row, collect, generate
from lora_endpoint.handler.sampling import SamplingParams

GREEDY = SamplingParams(max_new_tokens=12, do_sample=False)


def row(lm, text: str, adapter: str | None = None, **params) -> Row:  # type: ignore[no-untyped-def]
    ids = tuple(lm.tokenizer(text).input_ids)
    return Row(ids, adapter, replace(GREEDY, **params))


def solo(lm, r: Row) -> list[int]:  # type: ignore[no-untyped-def]
    """The row's tokens from the reference decode loop, alone."""
    return generate(lm, [r])[0].token_ids


@pytest.fixture
def engine(loaded):  # type: ignore[no-untyped-def]
    engines: list[Engine] = []

    def make(**limits: int) -> Engine:
        settings = {"max_rows": 8, "kv_tokens": 8 * 256, "prefill_tokens": 512, "max_queue": 16, **limits}
        engines.append(Engine(loaded, EngineLimits(**settings)))
        return engines[-1]

    yield make
    for e in engines:
        e.stop()


def test_rows_keep_their_solo_tokens_whenever_they_join_or_leave(loaded, engine) -> None:
    e = engine()
    # GIVEN rows of different adapters, lengths, limits and stops, some sampled with a seed
    rows = [row(loaded, "The quick brown fox", "alpha", max_new_tokens=30, ignore_eos=True),
            row(loaded, "Hello", None, max_new_tokens=5),
            row(loaded, "A LoRA adapter adds a low-rank update", "beta", max_new_tokens=18, ignore_eos=True),
            row(loaded, "SageMaker endpoints", "alpha", max_new_tokens=9, stop=("e",)),
            row(loaded, "Hello world, this is", "beta", max_new_tokens=14, do_sample=True, temperature=0.9,
                seed=7, ignore_eos=True),
            row(loaded, "0123", None, max_new_tokens=22, ignore_eos=True, repetition_penalty=1.3)]
    expected = [solo(loaded, r) for r in rows]
    # WHEN they are submitted while others run: the first alone, then one more after every few steps
    first = e.submit([rows[0]])
    steps = first.steps()
    got_first = [next(steps)]
    handles = []
    for r in rows[1:]:
        handles.append(e.submit([r]))
        got_first += [next(steps), next(steps)]
    got_first += list(steps)
    results = [collect([rows[0]], iter(got_first))[0]] + [h.results()[0] for h in handles]
    # THEN every row produced exactly its solo tokens
    assert [r.token_ids for r in results] == expected
    assert e.stats.largest_batch >= 3


def test_a_short_request_submitted_during_a_long_one_finishes_first(loaded, engine) -> None:
    e = engine()
    long = e.submit([row(loaded, "The quick brown fox", "alpha", max_new_tokens=200, ignore_eos=True)])
    steps = long.steps()
    next(steps)
    short = e.submit([row(loaded, "Hello", "beta", max_new_tokens=3, ignore_eos=True)])
    assert len(short.results()[0].token_ids) == 3
    remaining = list(steps)
    assert len(remaining) > 100  # the long one was still running when the short one ended


def test_a_long_prompt_is_prefilled_in_chunks_while_a_stream_keeps_getting_tokens(loaded, engine) -> None:
    e = engine(prefill_tokens=16)
    prompt = " ".join(["the quick brown fox"] * 12)
    long = row(loaded, prompt, "alpha", max_new_tokens=4, ignore_eos=True)
    assert len(long.prompt_ids) > 3 * 16
    expected = solo(loaded, long)
    stream = e.submit([row(loaded, "Hello", None, max_new_tokens=60, ignore_eos=True)])
    steps = stream.steps()
    next(steps)
    iterations_before = e.stats.prefill_passes
    handle = e.submit([long])
    # while the long prompt is prefilled (several chunks), the stream gets a token every iteration
    got = [next(steps) for _ in range(3)]
    assert all(len(step) == 1 for step in got)
    assert handle.results()[0].token_ids == expected
    assert e.stats.prefill_passes - iterations_before >= 3


def test_overload_is_an_error_not_a_crash(loaded, engine) -> None:
    e = engine(max_rows=1, max_queue=1)
    running = e.submit([row(loaded, "Hello", None, max_new_tokens=80, ignore_eos=True)])
    steps = running.steps()
    next(steps)
    waiting = e.submit([row(loaded, "Hi", None, max_new_tokens=2)])  # queued: no free row
    with pytest.raises(ModelOverloaded) as refused:
        e.submit([row(loaded, "Hi", None, max_new_tokens=2)])
    assert refused.value.status == 429 and refused.value.code == "model_overloaded"
    assert len(list(steps)) > 0 and len(waiting.results()[0].token_ids) >= 1
    assert e.stats.overloaded == 1


def test_requests_beyond_the_kv_budget_wait_and_one_that_can_never_fit_is_refused(loaded, engine) -> None:
    e = engine(kv_tokens=128, max_rows=4)  # two rows of up to 64 positions
    rows = [row(loaded, "Hello", None, max_new_tokens=40, ignore_eos=True) for _ in range(4)]
    handles = [e.submit([r]) for r in rows]
    assert [len(h.results()[0].token_ids) for h in handles] == [40] * 4
    assert e.stats.largest_batch <= 2
    with pytest.raises(ContextLengthExceeded):
        e.submit([row(loaded, "Hello", None, max_new_tokens=200)])


def test_each_request_s_deadline_runs_from_its_own_arrival(loaded, engine) -> None:
    e = engine()
    slow = e.submit([row(loaded, "Hello", None, max_new_tokens=200, ignore_eos=True)],
                    deadline=time.monotonic() + 0.2)
    fresh = e.submit([row(loaded, "Hi", None, max_new_tokens=5, ignore_eos=True)], deadline=time.monotonic() + 60)
    assert slow.results()[0].finish_reason == "time_limit"
    assert fresh.results()[0].finish_reason == "length"


def test_cancelling_a_request_frees_its_rows(loaded, engine) -> None:
    e = engine(max_rows=1)
    handle = e.submit([row(loaded, "Hello", None, max_new_tokens=200, ignore_eos=True)])
    steps = handle.steps()
    next(steps)
    steps.close()  # the client went away
    done = threading.Event()
    after = e.submit([row(loaded, "Hi", None, max_new_tokens=2, ignore_eos=True)])
    threading.Thread(target=lambda: (after.results(), done.set()), daemon=True).start()
    assert done.wait(30)  # the only row slot was given back


def test_a_cancelled_request_leaves_the_queue_at_once_even_behind_one_that_cannot_start(loaded, engine) -> None:
    # GIVEN one long row in the only slot, and a queue of two behind it
    e = engine(max_rows=1, max_queue=2)
    long = row(loaded, "Hello", None, max_new_tokens=200, ignore_eos=True)
    running = e.submit([long])
    steps = running.steps()
    next(steps)
    blocked = e.submit([long])  # the front of the queue: it waits for the slot
    released_at: list[int] = []
    released = threading.Event()
    gave_up = e.submit([long], on_release=lambda: (released_at.append(e.stats.iterations), released.set()))
    with pytest.raises(ModelOverloaded):
        e.submit([long])
    # WHEN the second waiting caller gives up
    gave_up.cancel()
    # THEN its place is freed within a few iterations, long before the running row's 200 end
    assert released.wait(30) and released_at[0] < 100, released_at
    late = e.submit([long])  # the freed place takes a new request
    for handle in (running, blocked, late):
        handle.cancel()
    steps.close()


def test_a_sliding_window_model_is_served_within_its_window(tiny_model_dir) -> None:
    from lora_endpoint.contract.settings import HandlerSettings
    from lora_endpoint.handler.engine import engine_for, sliding_window
    from lora_endpoint.handler.loading import load_model

    lm = load_model(tiny_model_dir, HandlerSettings.from_env({}))
    lm.model.config.sliding_window = 64  # full attention is exact within the window
    assert sliding_window(lm.model) == 64
    try:
        engine_for(lm)
        assert lm.context_length == 64
    finally:
        lm.engine.stop()
    lm.model.config.use_sliding_window = False  # Qwen2 carries a window it does not use
    assert sliding_window(lm.model) is None


def test_a_request_arriving_during_a_stream_gets_its_first_token_within_two_iterations(loaded, engine) -> None:
    e = engine()
    stream = e.submit([row(loaded, "The quick brown fox", "alpha", max_new_tokens=150, ignore_eos=True)])
    steps = stream.steps()
    for _ in range(5):
        next(steps)
    newcomer = e.submit([row(loaded, "Hello", "beta", max_new_tokens=5, ignore_eos=True)])
    next(newcomer.steps())
    assert newcomer.arrived_at is not None and newcomer.first_token_at is not None
    assert newcomer.first_token_at - newcomer.arrived_at <= 1  # admitted and prefilled in the first iteration
    steps.close()


@pytest.fixture
def thread_crashes(monkeypatch) -> list[BaseException | None]:  # type: ignore[no-untyped-def]
    """What escapes any thread (the engine's) while the test runs."""
    crashes: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args.exc_value))
    return crashes


def five_decoding(lm, e: Engine) -> list:  # type: ignore[no-untyped-def]
    """Five long rows past their first token: failing them in any order but last-to-first moves cache rows."""
    texts = ("Hello", "0123", "The quick", "A LoRA", "Sage")
    steps = [e.submit([row(lm, text, max_new_tokens=200, ignore_eos=True)]).steps() for text in texts]
    for s in steps:
        next(s)
    return steps


def drain_expecting(error: type[Exception], steps: list) -> None:  # type: ignore[type-arg]
    for s in steps:
        with pytest.raises(error):
            for _ in s:
                pass


def test_stopping_with_rows_running_fails_them_with_model_overloaded(loaded, engine, thread_crashes) -> None:
    e = engine()
    steps = five_decoding(loaded, e)
    waiting = e.submit([row(loaded, "SageMaker", max_new_tokens=3)])
    # WHEN the engine stops under them
    e.stop()
    # THEN the engine thread ends cleanly and every caller gets model_overloaded, never a hang
    assert not e._thread.is_alive() and thread_crashes == []
    drain_expecting(ModelOverloaded, steps)
    with pytest.raises(ModelOverloaded):
        waiting.results()


def test_an_iteration_that_fails_fails_what_runs_and_the_engine_goes_on(
    loaded, engine, thread_crashes, monkeypatch
) -> None:
    from lora_endpoint.contract.errors import GenerationFailed

    e = engine()
    steps = five_decoding(loaded, e)
    # WHEN a bug in the engine breaks one iteration
    real, broken = e._decode, [True]

    def decode_once_broken(events):  # type: ignore[no-untyped-def]
        if broken.pop() if broken else False:
            raise RuntimeError("a bug")
        return real(events)

    monkeypatch.setattr(e, "_decode", decode_once_broken)
    give_up = time.monotonic() + 30
    while (e._decoding or e._prefilling) and not thread_crashes and time.monotonic() < give_up:
        time.sleep(0.01)
    # THEN the engine thread lives on, every running request fails with a 500, and the next one is served
    assert thread_crashes == [] and e._thread.is_alive()
    drain_expecting(GenerationFailed, steps)
    assert e.submit([row(loaded, "Hello", max_new_tokens=3, ignore_eos=True)]).results()[0].token_ids
