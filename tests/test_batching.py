"""The shared batch of `nextchar serve` (batching.py) against Sampler.generate, its reference."""

import threading
import time

import pytest
import torch

from nextchar.batching import Batcher, Busy
from nextchar.config import ModelConfig, SampleConfig
from nextchar.jobs import Job
from nextchar.model import CharRNN
from nextchar.sample import Sampler, Stream
from nextchar.stepping import int8_fits
from nextchar.vocab import Vocab

VOCAB = Vocab(list("\nabcdefghijklmnop ."))  # with a line break: no prime reads one
NO_BREAK = Vocab(list("abcdefghijklmnop ."))  # without: each sample draws its first character


def make_sampler(cell: str, precision: str = "fp32", vocab: Vocab = VOCAB) -> Sampler:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell=cell, embed=8, hidden=16, layers=2))
    with torch.no_grad():  # sharper than the initial weights: draws depend on the logits
        for p in model.parameters():
            p.mul_(4)
    return Sampler(model.eval(), vocab, precision)


class Reader:
    """Collects a job's text through Job.read() in a thread, as a service's reader would."""

    def __init__(self, config: SampleConfig):
        self.woken = threading.Event()
        self.job = Job(config, time.monotonic() + 60, self.woken.set)
        self.pieces = [[] for _ in range(config.num_samples)]
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            self.woken.wait()
            self.woken.clear()
            ended = self.job.ended
            for row, text in enumerate(self.job.read()):
                self.pieces[row].append(text)
            if ended:
                return

    def texts(self, timeout: float = 30) -> list[str]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the job never ended"
        return [self.job.prime + "".join(p) for p in self.pieces]


def run_jobs(batcher: Batcher, configs: list[SampleConfig], stagger: float = 0.0) -> list[Reader]:
    readers = []
    for config in configs:
        reader = Reader(config)
        batcher.reserve(reader.job)
        batcher.start(reader.job)
        readers.append(reader)
        time.sleep(stagger)
    return readers


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("vocab", [VOCAB, NO_BREAK], ids=["line-break", "no-line-break"])
def test_a_lone_job_gives_the_text_of_generate(cell, precision, vocab):
    sampler = make_sampler(cell, precision, vocab)
    if precision == "int8" and not int8_fits(sampler.model):
        pytest.skip("no int8 kernel here")
    batcher = Batcher(sampler, max_streams=8)
    try:
        for config in (
            SampleConfig(length=120, seed=3, prime="abc", temperature=0.9),
            SampleConfig(length=60, seed=4, num_samples=3),
            SampleConfig(length=50, seed=5, top_k=3, top_p=0.8, prime="b"),
            SampleConfig(length=40, greedy=True, prime="ab"),
        ):
            (reader,) = run_jobs(batcher, [config])
            assert reader.texts() == sampler.generate(config)
            assert reader.job.ended == "done" and reader.job.seed is not None
    finally:
        batcher.close()


@pytest.mark.parametrize("noise_block", [Stream.NOISE_BLOCK, 7 * len(VOCAB)])
def test_jobs_sharing_the_batch_give_their_lone_texts(noise_block, monkeypatch):
    """Jobs with different seeds, settings and lengths, joining while others run, each get the
    text they get alone (fp32: batched products could differ in the last bit, see batching.py;
    on these small models no near tie turns that into another character). With blocks of noise
    of 7 steps, streams move on to their next block every few steps."""
    monkeypatch.setattr(Stream, "NOISE_BLOCK", noise_block)
    sampler = make_sampler("lstm")
    configs = [
        SampleConfig(
            length=300 - 20 * i,
            seed=i,
            prime="ab"[: i % 3],
            temperature=(0.8, 1.0)[i % 2],
            top_k=4 if i % 4 == 3 else None,
            num_samples=1 + (i // 2) % 2,
            greedy=i == 5,
        )
        for i in range(10)
    ]  # groups of jobs with the same settings, drawn together
    alone = [sampler.generate(c) for c in configs]
    batcher = Batcher(sampler, max_streams=32)
    try:
        readers = run_jobs(batcher, configs, stagger=0.003)
        together = [r.texts() for r in readers]
        assert batcher.widest > 2, "the jobs never shared a step"
    finally:
        batcher.close()
    assert together == alone
    assert batcher.reserved == 0


def test_a_cancelled_job_leaves_at_the_next_step_and_the_others_go_on():
    sampler = make_sampler("gru")
    config = SampleConfig(length=3000, seed=11, prime="a")
    batcher = Batcher(sampler, max_streams=4)
    try:
        leaves, stays = run_jobs(batcher, [SampleConfig(length=100_000, seed=12), config])
        while stays.job.produced < 5:
            time.sleep(0.001)
        leaves.job.cancel()
        leaves.thread.join(5)
        assert leaves.job.ended == "cancelled"
        assert leaves.job.produced < 1000 and batcher.reserved == 1
        assert stays.texts() == sampler.generate(config)
    finally:
        batcher.close()
    assert batcher.reserved == 0


def test_limits_deadlines_and_empty_jobs():
    sampler = make_sampler("rnn")
    batcher = Batcher(sampler, max_streams=3)
    try:
        late = Job(SampleConfig(length=10_000, seed=1), deadline=time.monotonic() + 0.05)
        batcher.reserve(late)
        with pytest.raises(Busy):
            batcher.reserve(Job(SampleConfig(num_samples=3), deadline=time.monotonic() + 60))
        batcher.start(late)
        (empty,) = run_jobs(batcher, [SampleConfig(length=0, prime="ab", seed=2)])
        assert empty.texts() == ["ab"] and empty.job.ended == "done"
        deadline = time.monotonic() + 10
        while late.ended is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert late.ended == "timeout" and late.produced < 10_000
        assert batcher.reserved == 0
    finally:
        batcher.close()
    with pytest.raises(ValueError, match="named precision"):
        Batcher(make_sampler("lstm", "auto"), 4)


def test_close_ends_running_jobs():
    batcher = Batcher(make_sampler("lstm"), max_streams=2)
    (reader,) = run_jobs(batcher, [SampleConfig(length=1_000_000, seed=1)])
    while reader.job.produced < 3:
        time.sleep(0.001)
    batcher.close()
    reader.thread.join(5)
    assert reader.job.ended == "cancelled" and batcher.reserved == 0
    with pytest.raises(Busy):
        batcher.reserve(Job(SampleConfig(), deadline=time.monotonic() + 1))


def test_a_burst_of_jobs_is_primed_in_a_few_calls():
    """Jobs that wait for the primer together are primed as Sampler.start primes one job: a prime
    they share is run once, and every first character drawn at random goes into one call (the
    burst of a service's first second); each job still gets its lone text."""
    sampler = make_sampler("lstm")
    configs = [SampleConfig(length=60, seed=i, prime=("ab", "ba", "")[i % 3]) for i in range(9)]
    alone = [sampler.generate(c) for c in configs]
    calls = []
    run_prime = sampler.run_prime
    sampler.run_prime = lambda ids: calls.append(len(ids)) or run_prime(ids)
    batcher = Batcher(sampler, max_streams=16)
    try:
        with batcher._cond:  # the primer waits until every job is queued (the lock is re-entrant)
            readers = run_jobs(batcher, configs)
        assert [r.texts() for r in readers] == alone
    finally:
        batcher.close()
    assert sorted(calls) == [1, 2, 2]  # "ab", "ba", and a line break for the unprimed

    sampler = make_sampler("gru", vocab=NO_BREAK)
    configs = [SampleConfig(length=40, seed=i, num_samples=1 + i % 2) for i in range(6)]
    alone = [sampler.generate(c) for c in configs]
    forward = sampler.model.forward
    batches = []
    sampler.model.forward = lambda idx, *a: batches.append(tuple(idx.shape)) or forward(idx, *a)
    batcher = Batcher(sampler, max_streams=16)
    try:
        with batcher._cond:
            readers = run_jobs(batcher, configs)
        assert [r.texts() for r in readers] == alone
    finally:
        batcher.close()
    assert batches == [(9, 1)]  # the 9 samples' first characters in one call
