"""Conformance checks for decoders, handlers and sinks; plugin authors run them too.

Each ``check_*`` function builds the component from a config dict the way the agent does
(validated by its ``config_model``) and raises ``AssertionError`` naming the broken rule.

What is checked:

- every component: ``config_model`` is a frozen :class:`~agent.config.ComponentConfig` with
  ``extra="forbid"``, a ``type`` literal and a description on every other field; the
  config validates; unknown keys are rejected.
- decoder: ``channels``; batch shapes and dtypes; decoding in two chunks gives the same
  samples as in one call (so batching never changes results, also for session state);
  each bad payload is counted in ``errors`` without raising and without losing the good
  messages around it; random bytes never raise.
- handler: ``load`` with each wrong window shape raises :class:`~agent.errors.ModelError`;
  ``infer`` returns ``[n]`` finite floats; one call for N windows equals N calls of one
  (and a permuted batch gives permuted scores: no per-device state, no cross-talk
  between rows); repeated calls agree; thread confinement: the runtime loads in one
  thread and calls ``infer`` from the worker thread (never concurrently), so a handler
  loaded in one thread must give the same scores when called from another. Its declared
  abilities: ``describe`` gives one JSON-able dict per hit, ``last_details`` ``[n]`` arrays.
  The declared output kind: ``output`` names a kind and the handler implements that kind's
  Protocol in full; ``classes``: labels with the healthy one among them,
  ``probabilities`` ``[n, K]`` in [0, 1] summing to 1, batch-invariant, ``infer`` =
  ``1 - P(healthy)``; ``regression``: quantity, units, direction and a finite limit,
  ``estimate`` gives ``low <= value <= high``, finite and batch-invariant, ``infer`` = the
  value.
- stream handler (implements ``StreamHandler``, ``stateful = True``): events for batches
  fed in chunks equal those for the same samples in one batch; every event and summary
  names its ``device``; each batch updated, undone by the step ``save`` returned and
  updated again gives the events and summaries of one update.
- sink: implements ``Sink`` and keeps its validated ``config``; a ``Pipelined`` sink is
  also ``Concurrent``; ``start``, ``write_many`` (retried while it raises
  ``NotConnectedError``, up to ``timeout``), the same records again (redelivery after a
  crash must be tolerated), an empty list, ``close``; only ``NotConnectedError`` may signal
  an unreachable upstream.
"""

from __future__ import annotations

import json
import threading
import time
import typing
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from agent.config import ComponentConfig
from agent.errors import ModelError, NotConnectedError
from agent.protocols import (
    ClassOutput,
    Concurrent,
    DeclaresOutput,
    Describes,
    Details,
    ModelHandler,
    OutputKind,
    Pipelined,
    RegressionOutput,
    Sink,
    StreamHandler,
    Thresholded,
    output_kind,
)
from agent.records import Message, Record, SampleBatch


def check_config_model(cls: type, config: dict) -> BaseModel:
    """The class's config model follows the rules; return ``config`` validated."""
    model = getattr(cls, "config_model", None)
    assert isinstance(model, type) and issubclass(model, ComponentConfig), (
        f"{cls.__name__}.config_model must subclass agent.config.ComponentConfig"
    )
    assert model.model_config.get("frozen") is True, f"{model.__name__} must be frozen"
    assert model.model_config.get("extra") == "forbid", f"{model.__name__}: extra='forbid'"
    type_field = model.model_fields["type"]
    assert typing.get_origin(type_field.annotation) is typing.Literal, (
        f"{model.__name__}.type must be a Literal of the registered names"
    )
    assert config.get("type") in typing.get_args(type_field.annotation), (
        f"config type {config.get('type')!r} is not one of {model.__name__}.type"
    )
    undocumented = [n for n, f in model.model_fields.items() if n != "type" and not f.description]
    assert not undocumented, f"{model.__name__}: fields without a description: {undocumented}"
    validated = model.model_validate(config)
    try:
        model.model_validate({**config, "no_such_key_xyz": 1})
    except ValidationError:
        pass
    else:
        raise AssertionError(f"{model.__name__} accepts unknown keys")
    return validated


# -- decoders ------------------------------------------------------------------------------
def _check_batch(batch: SampleBatch, channels: int) -> None:
    assert isinstance(batch, SampleBatch), f"decode_many returned {type(batch).__name__}"
    n = len(batch.devices)
    assert batch.values.shape == (n, channels), f"values shape {batch.values.shape}"
    assert batch.values.dtype == np.float32, f"values dtype {batch.values.dtype}"
    assert batch.ts.shape == (n,) and batch.ts.dtype == np.float64, "ts: [n] float64"
    assert batch.seq.shape == (n,) and batch.seq.dtype == np.int64, "seq: [n] int64"
    assert all(isinstance(d, str) for d in batch.devices), "device ids must be str"
    assert all(isinstance(v, int) and v > 0 for v in batch.errors.values()), "errors: counts"
    if batch.detections is not None:
        det = batch.detections
        assert det.boxes.shape == (len(det), 4), "detections.boxes: [k, 4]"
        assert len(det.frame) == len(det.track) == len(det.confidence) == len(det)
        assert len(det) == 0 or int(det.frame.max()) < n, "detections.frame out of range"


def _samples(batches: Sequence[SampleBatch]) -> list[tuple]:
    out = []
    for b in batches:
        for i, d in enumerate(b.devices):
            out.append((d, float(b.ts[i]), int(b.seq[i]), b.values[i].tolist()))
    return out


def check_decoder(
    cls: type,
    config: dict,
    messages: Sequence[Message],
    bad: Sequence[Message] = (),
    *,
    seed: int = 0,
) -> None:
    """Check a decoder with good ``messages`` (at least 2) and ``bad`` payloads."""
    cfg = check_config_model(cls, config)
    assert len(messages) >= 2, "give at least two good messages"
    dec = cls(cfg)
    channels = dec.channels
    assert isinstance(channels, int) and channels > 0, "channels must be a positive int"
    _check_batch(dec.decode_many([]), channels)
    whole = cls(cfg).decode_many(list(messages))
    _check_batch(whole, channels)
    assert len(whole) > 0, "the good messages gave no samples"
    assert not whole.errors, f"good messages were rejected: {whole.errors}"
    split = cls(cfg)
    half = len(messages) // 2
    parts = [split.decode_many(list(messages[:half])), split.decode_many(list(messages[half:]))]
    assert _samples([whole]) == _samples(parts), "decoding in two chunks changed the samples"
    for b in bad:
        fresh = cls(cfg)
        out = fresh.decode_many([*messages[:half], b, *messages[half:]])
        _check_batch(out, channels)
        assert sum(out.errors.values()) >= 1, f"bad payload not counted: {b.payload[:80]!r}"
        good = {s for s in _hashable(_samples([whole]))}
        assert good <= set(_hashable(_samples([out]))), "a bad payload lost good samples"
    rng = np.random.default_rng(seed)
    topic = messages[0].topic
    junk = [Message(topic, rng.bytes(int(rng.integers(0, 64)))) for _ in range(50)]
    _check_batch(cls(cfg).decode_many(junk), channels)


def _hashable(samples: list[tuple]) -> list[tuple]:
    return [(d, t, s, tuple(v)) for d, t, s, v in samples]


# -- handlers ------------------------------------------------------------------------------
def check_handler(
    cls: type,
    config: dict,
    window_size: int,
    channels: int,
    *,
    bad_shapes: Sequence[tuple[int, int]] = (),
    windows: np.ndarray | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    seed: int = 0,
) -> None:
    """Check a windowed ModelHandler; ``windows`` defaults to random ``[16, size, ch]``."""
    cfg = check_config_model(cls, config)
    for size, ch in bad_shapes:
        probe = cls(cfg)
        try:
            probe.load(size, ch)
        except ModelError:
            pass
        else:
            raise AssertionError(f"load({size}, {ch}) accepted a window the model cannot take")
    if windows is None:
        rng = np.random.default_rng(seed)
        windows = rng.normal(0, 1, (16, window_size, channels)).astype(np.float32)
    n = len(windows)
    assert n >= 2, "give at least two windows"
    result: dict[str, Any] = {}

    def load_in_thread() -> None:
        try:
            h = cls(cfg)
            h.load(window_size, channels)
            result["handler"] = h
            result["scores"] = np.asarray(h.infer(windows))
        except BaseException as e:
            result["error"] = e

    t = threading.Thread(target=load_in_thread, name="conformance-loader")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    h: ModelHandler = result["handler"]
    in_loader = result["scores"]
    assert isinstance(h, Thresholded), "a windowed handler has a threshold"
    thr = h.threshold
    assert isinstance(thr, (int, float)) and np.isfinite(thr), "threshold must be a finite number"
    scores = np.asarray(h.infer(windows))
    assert scores.shape == (n,), f"infer gave shape {scores.shape} for {n} windows"
    assert np.isfinite(scores).all(), "infer gave NaN or infinite scores"
    np.testing.assert_allclose(
        scores, in_loader, rtol, atol, err_msg="scores differ when called from another thread"
    )
    one_by_one = np.concatenate([np.asarray(h.infer(windows[i : i + 1])) for i in range(n)])
    np.testing.assert_allclose(
        scores, one_by_one, rtol, atol, err_msg="one call for N windows != N calls of one"
    )
    perm = np.random.default_rng(seed + 1).permutation(n)
    np.testing.assert_allclose(
        np.asarray(h.infer(windows[perm])), scores[perm], rtol, atol, err_msg="rows interact"
    )
    if isinstance(h, Describes):
        h.infer(windows)
        hits = np.arange(n)[::2]
        extra = h.describe(hits)
        assert len(extra) == len(hits), "describe must give one dict per hit"
        json.dumps(extra)
    if isinstance(h, Details):
        h.infer(windows)
        for name, d in h.last_details.items():
            assert np.shape(d) == (n,), f"last_details[{name!r}]: shape {np.shape(d)}, want ({n},)"
    check_output_kind(h, windows, rtol=rtol, atol=atol, seed=seed)


def check_output_kind(
    h: ModelHandler, windows: np.ndarray, *, rtol: float = 1e-4, atol: float = 1e-5, seed: int = 0
) -> str:
    """Check a loaded handler's declared output kind on ``windows``; return the kind."""
    kind = output_kind(h)
    declared = h.output if isinstance(h, DeclaresOutput) else None
    assert declared in typing.get_args(OutputKind), (
        f"{type(h).__name__} must declare output = one of {typing.get_args(OutputKind)}, "
        f"got {declared!r}"
    )
    if kind != "events":
        assert kind == declared, (
            f"{type(h).__name__} declares output {declared!r} but does not implement its "
            "Protocol (agent.protocols.ClassOutput / RegressionOutput) in full"
        )
    n = len(windows)
    perm = np.random.default_rng(seed + 2).permutation(n)
    if kind == "classes":
        assert isinstance(h, ClassOutput)
        classes = list(h.classes)
        assert len(classes) >= 2 and all(isinstance(c, str) for c in classes), "classes: labels"
        assert h.healthy in classes, f"healthy class {h.healthy!r} not in {classes}"
        assert 0 < h.threshold < 1, "threshold of 1 - P(healthy) must be in (0, 1)"
        p = np.asarray(h.probabilities(windows), np.float64)
        assert p.shape == (n, len(classes)), (
            f"probabilities shape {p.shape}, want {(n, len(classes))}"
        )
        assert np.isfinite(p).all() and (p >= -atol).all() and (p <= 1 + atol).all()
        np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-4, err_msg="rows must sum to 1")
        each = np.concatenate([h.probabilities(windows[i : i + 1]) for i in range(n)])
        np.testing.assert_allclose(p, each, rtol, atol, err_msg="probabilities: batching")
        np.testing.assert_allclose(h.probabilities(windows[perm]), p[perm], rtol, atol)
        healthy = classes.index(h.healthy)
        np.testing.assert_allclose(
            np.asarray(h.infer(windows)),
            1 - p[:, healthy],
            rtol,
            atol,
            err_msg="infer must be 1 - P(healthy)",
        )
    elif kind == "regression":
        assert isinstance(h, RegressionOutput)
        assert isinstance(h.quantity, str) and h.quantity, "quantity: a name (e.g. rul)"
        assert isinstance(h.units, str) and h.units, "units: e.g. cycles"
        assert h.worse in ("lower", "higher"), "worse: lower or higher"
        assert np.isfinite(h.threshold), "threshold (the limit) must be finite"
        value, low, high = (np.asarray(a, np.float64) for a in h.estimate(windows))
        for name, a in (("value", value), ("low", low), ("high", high)):
            assert a.shape == (n,), f"estimate {name}: shape {a.shape}, want ({n},)"
            assert np.isfinite(a).all(), f"estimate {name}: NaN or infinite"
        assert (low <= value).all() and (value <= high).all(), "need low <= value <= high"
        each = np.array([h.estimate(windows[i : i + 1])[0][0] for i in range(n)])
        np.testing.assert_allclose(value, each, rtol, atol, err_msg="estimate: batching")
        np.testing.assert_allclose(np.asarray(h.infer(windows)), value, rtol, atol)
    return kind


def check_stream_handler(
    cls: type,
    config: dict,
    make_batches: Callable[[], list[SampleBatch]],
    *,
    window_size: int = 1,
    channels: int = 1,
) -> None:
    """Check a stateful handler: ``make_batches()`` gives fresh decoded batches in order."""
    cfg = check_config_model(cls, config)
    batches = make_batches()
    assert len(batches) >= 2, "give at least two batches"
    a = cls(cfg)
    assert isinstance(a, StreamHandler) and a.stateful is True, (
        "a stream handler implements agent.protocols.StreamHandler with stateful = True"
    )
    a.load(window_size, channels)
    events_a = [e for b in batches for e in a.update(b)]
    summaries_a = a.flush()
    b = cls(cfg)
    b.load(window_size, channels)
    merged = _concat(make_batches())
    events_b = b.update(merged)
    summaries_b = b.flush()
    assert _json(events_a) == _json(events_b), "events depend on how samples were batched"
    assert _json(summaries_a) == _json(summaries_b), "summaries depend on the batching"
    c = cls(cfg)
    c.load(window_size, channels)
    events_c = []
    for batch in make_batches():
        restore = c.save(list(dict.fromkeys(batch.devices)))
        c.update(batch)
        restore()
        events_c += c.update(batch)
    assert _json(events_c) == _json(events_a), "save() did not put back what update changed"
    assert _json(c.flush()) == _json(summaries_a), "save() did not put back the summaries"
    for rec in [*events_a, *summaries_a]:
        assert isinstance(rec, dict) and isinstance(rec.get("device"), str), "needs a device"
    assert summaries_a, "a period with samples gave no summaries"


def _json(items: list[dict]) -> str:
    return json.dumps(items, sort_keys=True, default=float)


def _concat(batches: list[SampleBatch]) -> SampleBatch:
    from agent.records import Detections

    out = SampleBatch(
        [d for b in batches for d in b.devices],
        np.concatenate([b.ts for b in batches]),
        np.concatenate([b.seq for b in batches]),
        np.concatenate([b.values for b in batches]),
    )
    dets = [b.detections for b in batches if b.detections is not None]
    if len(dets) == len(batches):
        offsets = np.cumsum([0] + [len(b) for b in batches[:-1]])
        out.detections = Detections(
            np.concatenate([d.frame + o for d, o in zip(dets, offsets)]),
            np.concatenate([d.track for d in dets]),
            np.concatenate([d.boxes for d in dets]),
            np.concatenate([d.confidence for d in dets]),
            [lab for d in dets for lab in d.labels],
        )
    return out


# -- sinks ---------------------------------------------------------------------------------
def check_sink(
    cls: type,
    config: dict,
    context: Any,
    records: Sequence[Record],
    *,
    timeout: float = 20,
) -> Any:
    """Start a sink, deliver ``records`` twice and nothing, close it; return the sink."""
    cfg = check_config_model(cls, config)
    assert records, "give some records"
    sink = cls(cfg, context)
    _check_sink_abilities(sink, cfg)
    sink.start()
    try:
        for batch in (list(records), list(records), []):
            deadline = time.monotonic() + timeout
            while True:
                try:
                    sink.write_many(batch)
                    break
                except NotConnectedError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
    finally:
        sink.close()
    return sink


def _check_sink_abilities(sink: Any, cfg: BaseModel) -> None:
    assert isinstance(sink, Sink), "a sink implements agent.protocols.Sink"
    assert sink.config == cfg, "a sink keeps its validated config as `config`"
    if isinstance(sink, Pipelined):
        assert isinstance(sink, Concurrent) and sink.concurrent, (
            "publish_many pipelines the event lane only of a Concurrent sink: declare "
            "concurrent = True"
        )


def check_sink_unavailable(cls: type, config: dict, context: Any, records: Sequence[Record]):
    """With its upstream unreachable, ``write_many`` raises ``NotConnectedError`` only."""
    cfg = check_config_model(cls, config)
    sink = cls(cfg, context)
    sink.start()
    try:
        sink.write_many(list(records))
    except NotConnectedError:
        pass
    else:
        raise AssertionError("write_many succeeded without an upstream")
    finally:
        sink.close()
