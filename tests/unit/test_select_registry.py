"""Selection with crafted metrics: budgets, objectives in priority order, goals, ties, noisy timings."""

import numpy as np
import pytest

from pipeline.evaluate.metrics import budget_violations, compare, latency_stats
from pipeline.recipe import Budget, Goals, OutputSpec
from pipeline.release.select import Candidate, select


def cand(variant, target="wasm", median=1.0, size=100, status="ok", reasons=(), **values):
    return Candidate(variant=variant, runtime="ort", target=target, status=status, reasons=list(reasons),
                     values={"latency": median if status == "ok" else None, "size": size, **values})


def test_fastest_inside_budget_wins():
    d = select("wasm", [cand("fp32", median=3), cand("int8", median=1, reasons=["top-1 agreement 0.5 < 0.99"]),
                        cand("fp16", median=2), cand("x", target="webgpu", median=0.1)])
    assert d.status == "chosen" and d.chosen.variant == "fp16"
    assert [c.variant for c in d.ranking] == ["fp16", "fp32"]
    assert {c.variant for c in d.rejected} == {"int8"}


def test_tie_goes_to_smaller_download():
    d = select("wasm", [cand("a", median=1.00, size=500), cand("b", median=1.01, size=100)], tie_tolerance=0.02)
    assert d.chosen.variant == "b" and "smaller download" in d.reason
    d = select("wasm", [cand("a", median=1.00, size=500), cand("b", median=1.10, size=100)], tie_tolerance=0.02)
    assert d.chosen.variant == "a"


def test_unmet_never_falls_back():
    d = select("webgpu", [cand("fp32", target="webgpu", reasons=["max abs error 3 > 0.01"]),
                          cand("fp16", target="webgpu", status="unsupported", reasons=["lacks shader-f16"])])
    assert d.status == "unmet" and d.chosen is None
    assert "fp32: max abs error" in d.reason and "lacks shader-f16" in d.reason
    assert select("webgl", [cand("fp32")]).reason == "no candidate was built for this target"


def test_compare_and_budget():
    ref = {"y": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])}
    got = {"y": np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])}
    labels = np.array([0, 1, 0, 0])
    m = compare(got, ref, [OutputSpec(name="y", kind="logits")], labels)
    assert m["top1_agreement"] == 0.75 and m["native_label_accuracy"] == 0.75 and m["label_accuracy"] == 0.5
    assert m["max_abs_error"] == 1.0
    v = budget_violations(m, Budget(min_top1_agreement=0.99, max_accuracy_drop=0.01, max_abs_error=0.5))
    assert len(v) == 3 and "25.00 points" in v[1]
    assert budget_violations(m, Budget(min_top1_agreement=0.7)) == []
    nan = compare({"y": got["y"] * np.nan}, ref, [OutputSpec(name="y", kind="logits")], None)
    assert "outputs contain NaN/Inf" in budget_violations(nan, Budget(max_abs_error=1e9))
    with pytest.raises(ValueError, match="shape"):
        compare({"y": got["y"][:2]}, ref, [OutputSpec(name="y")], None)


def test_latency_stats():
    s = latency_stats([1, 2, 3, 4, 100])
    assert s["median"] == 3 and s["n"] == 5 and s["p90"] > 4


def test_objectives_in_priority_order_and_goals():
    a = cand("a", median=1.00, size=900, cold_start=900, memory=50)
    b = cand("b", median=1.01, size=800, cold_start=300, memory=90)
    c = cand("c", median=2.00, size=100, cold_start=100, memory=10)
    d = select("wasm", [a, b, c], 0.02, ["latency", "cold_start"])
    assert d.chosen.variant == "b" and "latency > cold_start" in d.reason  # tied on latency, faster start
    d = select("wasm", [cand("a", median=1.0), cand("b", median=1.01)], 0.02, ["cold_start", "latency"])
    assert d.chosen.variant == "a"  # no cold start measured for either: latency decides
    g = select("wasm", [a, b, c], 0.02, ["latency"], Goals(cold_start_ms=500))
    assert g.chosen.variant == "b" and any("cold start 900 ms > goal 500" in r for r in a.reasons)
    u = select("wasm", [cand("x", median=5.0)], 0.02, ["latency"], Goals(latency_ms=1))
    assert u.status == "unmet" and "median latency 5 ms > goal 1 ms" in u.reason
    s = select("wasm", [cand("x", median=5.0, slowdown=9.0)], 0.02, ["latency"], Goals(max_slowdown_vs_native=4))
    assert s.status == "unmet" and "slowdown vs native 9 x > goal 4 x" in s.reason


def test_every_objective_reads_a_measurement():
    """Each row of pipeline.objectives reads its value from a browser measurement (and the native run)."""
    from pipeline.objectives import OBJECTIVES, objective_values

    m = {"latency": {"median": 4.0}, "cold_start_ms": 120.0, "download_bytes": 2048, "peak_memory_bytes": 10,
         "qoe": {"worker": {"input_delay_ms": {"p95": 3.0}}}, "ship_mode": {"mode": "worker"}}
    v = objective_values(m, {"latency_ms": {"median": 2.0}})
    assert v == {"latency": 4.0, "cold_start": 120.0, "size": 2048, "memory": 10, "responsiveness": 3.0,
                 "slowdown": 2.0}
    assert set(v) == set(OBJECTIVES) and len({o.goal for o in OBJECTIVES.values()}) == len(OBJECTIVES)
    assert set(Goals.model_fields) == {o.goal for o in OBJECTIVES.values()}


def test_ship_mode_from_qoe():
    from pipeline.evaluate.metrics import ship_mode

    # The page judges responsiveness (bench.js isResponsive); ship_mode reads its verdicts.
    smooth = {"fps": 60, "dropped_frames": 0, "input_delay_ms": {"p95": 5}, "responsive": True}
    janky = {"fps": 12, "dropped_frames": 140, "input_delay_ms": {"p95": 400}, "responsive": False}
    assert ship_mode({"main": smooth, "worker": smooth})["mode"] == "main"
    m = ship_mode({"main": janky, "worker": smooth})
    assert m["mode"] == "worker" and "400 ms" in m["reason"]
    assert ship_mode({"main": janky, "worker": {"error": "worker: no WebGPU"}})["mode"] == "main"
    assert ship_mode(None)["mode"] is None
    assert ship_mode({"worker": smooth})["mode"] == "worker"  # main thread not measured


def test_noisy_timing_is_flagged():
    assert latency_stats([10, 10.1, 9.9, 10, 10.2, 10])["noisy"] is None
    assert "IQR" in latency_stats([5, 10, 20, 5, 30, 10, 8])["noisy"]
    assert "only 3 runs" in latency_stats([1, 1, 1])["noisy"]
    c = cand("a", median=1.0)
    c.record = {"latency": latency_stats([1, 1, 1])}
    assert "[timing noisy: only 3 runs]" in select("wasm", [c]).reason


def test_capped_evaluation_covers_the_whole_set():
    from pipeline.evaluate.samples import eval_subset

    idx = eval_subset(56, 16)
    assert len(idx) == 16 and idx[0] == 0 and idx[-1] == 55
    assert len({i // 7 for i in idx}) == 8  # 8 photos x 7 views: every photo is represented
    assert list(eval_subset(5, 10)) == [0, 1, 2, 3, 4]


def test_accuracy_is_judged_per_output_and_by_kind():
    """A single logit is judged by its sign (an argmax over one value always agrees), a sequence per position,
    an embedding by cosine, and every output against its own bounds."""
    from pipeline.recipe import OutputBudget

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((40, 1))
    flipped = ref.copy()
    flipped[:10] *= -1  # 10 of 40 decisions change
    m = compare({"y": flipped}, {"y": ref}, [OutputSpec(name="y", kind="logits")], None)
    assert m["top1_agreement"] == 0.75 and m["outputs"]["y"]["decision"] == "threshold"

    seq = rng.standard_normal((4, 10, 5))  # [N, T, C]
    changed = seq.copy()
    for t in range(7):  # 7 of 10 steps of one sequence decide another class
        changed[0, t] = 0
        changed[0, t, (seq[0, t].argmax() + 1) % 5] = 10
    s = compare({"s": changed}, {"s": seq}, [OutputSpec(name="s", kind="logits")], None)["outputs"]["s"]
    assert s["positions"] == 10 and s["sequence_agreement"] == 0.75 and s["top1_agreement"] == 33 / 40

    emb = rng.standard_normal((6, 16))
    outs = {"emb": emb * 1.01, "box": np.full((6, 4), 100.0), "p": np.eye(6)[:, :3] + 0.1}
    refs = {"emb": emb, "box": np.full((6, 4), 101.0), "p": np.eye(6)[:, :3]}
    specs = [OutputSpec(name="emb", kind="embedding"), OutputSpec(name="box", kind="raw"),
             OutputSpec(name="p", kind="probabilities")]
    acc = compare(outs, refs, specs, None)
    assert acc["outputs"]["emb"]["min_cosine"] > 0.9999 and acc["max_abs_error"] == pytest.approx(1.0)
    budget = Budget(min_cosine=0.999, max_abs_error=0.2, outputs={"box": OutputBudget(max_rel_error=0.02)})
    assert budget_violations(acc, budget) == []  # box: 1 px of 101 is within 2 %; emb and p within 0.2
    v = budget_violations(acc, Budget(max_abs_error=0.2, min_top1_agreement=0.9))
    assert v == ["box: max abs error 1 > 0.2"]  # named by output; top-1 applies to `p` only
    assert budget_violations(acc, Budget(min_top1_agreement=0.9, outputs={"p": OutputBudget(min_top1_agreement=1.0)})) \
        == []
    # Retrieval: each sample's nearest other sample. Two near-duplicate pairs; an error moves sample 1 next to
    # sample 2, which changes the neighbour of 1 and of 2.
    base = np.array([[1, 0, 0], [0.99, 0.14, 0], [0, 1, 0], [0, 0.99, 0.14]])
    swapped = base.copy()
    swapped[1] = [0.1, 1, 0]
    r = compare({"e": swapped}, {"e": base}, [OutputSpec(name="e", kind="embedding")], None)["outputs"]["e"]
    assert r["retrieval_agreement"] == 0.5
    assert budget_violations({"outputs": {"e": r}}, Budget(min_retrieval_agreement=0.9)) == \
        ["retrieval agreement 0.5000 < 0.9 (nearest neighbour changed)"]
    assert "retrieval_agreement" not in compare({"e": base[:2]}, {"e": base[:2]},
                                                [OutputSpec(name="e", kind="embedding")], None)["outputs"]["e"]
    assert "cosine similarity not measurable" in budget_violations(compare({"y": ref}, {"y": ref},
                                                                           [OutputSpec(name="y", kind="raw")], None),
                                                                   Budget(min_cosine=0.9))[0]


def test_capped_accuracy_is_marked_in_the_decision():
    c = cand("a", median=1.0)
    c.record = {"accuracy": {"samples": 16, "of_samples": 56}}
    assert "[accuracy on 16 of 56 samples]" in select("wasm", [c]).reason


def test_ctc_output_is_judged_as_decoded_text():
    """A CTC head [N, T, classes]: greedy decoding (best class per step, repeats merged, blanks dropped); a step
    that changes only where a blank sits reads the same text, a changed character does not."""
    from pipeline.evaluate.metrics import ctc_decode, edit_distance

    def scores(steps, classes=5):
        x = np.full((len(steps), classes), -5.0)
        x[np.arange(len(steps)), steps] = 5.0
        return x

    ref = np.stack([scores([1, 1, 0, 2, 0, 0]), scores([3, 0, 3, 4, 4, 0]), scores([2, 2, 2, 0, 0, 0])])
    assert ctc_decode(ref) == [(1, 2), (3, 3, 4), (2,)]
    got = ref.copy()
    got[0] = scores([1, 0, 0, 2, 2, 0])  # blank moved, repeat added: still "1 2"
    got[1] = scores([3, 0, 1, 4, 4, 0])  # one character changed
    o = compare({"t": got}, {"t": ref}, [OutputSpec(name="t", kind="ctc")], None)["outputs"]["t"]
    assert o["top1_agreement"] == pytest.approx(15 / 18) and o["sequence_match"] == pytest.approx(2 / 3)
    assert o["char_error_rate"] == pytest.approx(1 / 6) and o["reference_chars"] == 6
    assert budget_violations({"outputs": {"t": o}}, Budget(max_char_error_rate=0.2, min_sequence_match=0.6)) == []
    assert budget_violations({"outputs": {"t": o}}, Budget(max_char_error_rate=0.1)) == \
        ["character error rate 0.1667 > 0.1"]
    assert edit_distance((1, 2, 3), (1, 3)) == 1 and edit_distance((), (4, 4)) == 2
    # Another blank class (some models put it last).
    assert ctc_decode(ref, blank=2) == [(1, 0, 0), (3, 0, 3, 4, 0), (0,)]  # a blank between repeats keeps both
    assert "decoded sequences not measurable" in budget_violations(
        compare({"y": ref}, {"y": ref}, [OutputSpec(name="y", kind="raw")], None), Budget(min_sequence_match=0.9))[0]


def test_stateful_sequences_feed_outputs_back():
    """A running sum as a stateful model: over sequences of 3 steps, the state input is the previous step's output
    (the data's value counts at a sequence's first step only); capped evaluations keep whole sequences."""
    from pipeline.evaluate.batching import BatchAxes, run_samples
    from pipeline.evaluate.samples import eval_subset

    x = np.arange(6, dtype=np.float32)[:, None]
    state = np.full((6, 1), 100.0, dtype=np.float32)
    step = lambda feed: {"total": feed["x"] + feed["state"]}  # noqa: E731
    axes = BatchAxes(feedback={"total": "state"}, steps=3)
    out = run_samples(step, {"x": x, "state": state}, 1, axes)["total"].ravel()
    assert out.tolist() == [100, 101, 103, 103, 107, 112]
    assert run_samples(step, {"x": x, "state": state}, 2)["total"].ravel().tolist() == [100 + i for i in range(6)]
    assert eval_subset(12, 7, steps=3).tolist() == [0, 1, 2, 9, 10, 11]  # 2 whole sequences fit in 7
    assert eval_subset(12, 2, steps=3).tolist() == [0, 1, 2]  # at least one whole sequence
    acc = compare({"y": np.array([[0.0], [0.1], [0.3], [0.0], [0.0], [0.2]])}, {"y": np.zeros((6, 1))},
                  [OutputSpec(name="y")], None, steps=3)
    assert acc["outputs"]["y"]["max_abs_error_by_step"] == pytest.approx([0.0, 0.1, 0.3])


def decode_boxes(outputs, threshold=0.5):
    """A detector's own rules for the test: rows of `det` [N, K, 6] (x1, y1, x2, y2, score, class) kept when
    their score reaches the threshold."""
    out = []
    for rows in outputs["det"]:
        keep = rows[rows[:, 4] >= threshold]
        out.append({"boxes": keep[:, :4], "scores": keep[:, 4], "classes": keep[:, 5]})
    return out


def test_detections_are_decoded_and_matched_by_iou():
    """Detections decoded by the model's own rules, then matched by IoU within their class: a box that drifted
    is a worse IoU, a score crossing the threshold is a missed (or extra) detection, another class is both."""
    from pipeline.evaluate.metrics import box_iou
    from pipeline.recipe import DetectionSpec

    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30]])).tolist() == \
        [[pytest.approx(50 / 150), 0.0]]
    ref = np.array([[[0, 0, 10, 10, 0.9, 0], [20, 20, 40, 40, 0.8, 1], [0, 0, 5, 5, 0.1, 0]],
                    [[10, 10, 20, 20, 0.6, 2], [0, 0, 1, 1, 0.2, 0], [50, 50, 60, 60, 0.55, 0]]])
    got = ref.copy()
    got[0, 0, :4] = [1, 0, 11, 10]   # moved by one pixel: IoU 9/11
    got[0, 2, 4] = 0.51              # a rejected box now passes the threshold: extra
    got[1, 2, 4] = 0.49              # a kept one now fails it: missed
    got[1, 0, 5] = 1                 # same box, another class: missed and extra
    det = DetectionSpec(name="boxes", decode={"function": "test_select_registry:decode_boxes"})
    specs = [OutputSpec(name="det")]
    o = compare({"det": got}, {"det": ref}, specs, None, detections=[det])["outputs"]["boxes"]
    assert (o["reference_detections"], o["detections"], o["matched"], o["missed"], o["extra"]) == (4, 4, 2, 2, 2)
    assert o["min_box_iou"] == pytest.approx(9 / 11) and o["max_score_error"] == pytest.approx(0.0)
    assert o["missed_detection_rate"] == 0.5 and o["samples_changed"] == 2
    acc = {"outputs": {"boxes": o, "det": {"max_abs_error": 1.0}}}
    assert budget_violations(acc, Budget(max_missed_detections=0.5, max_extra_detections=0.5, min_box_iou=0.8,
                                         max_abs_error=2)) == []
    v = budget_violations(acc, Budget(max_missed_detections=0.25, min_box_iou=0.9))
    assert v == ["boxes: missed detections 0.5000 (2 of 4 reference detections) > 0.25",
                 "boxes: box IoU 0.8182 < 0.9 (worst matched box)"]
    same = compare({"det": ref}, {"det": ref}, specs, None, detections=[det])
    assert same["missed_detection_rate"] == 0 and same["min_box_iou"] == 1.0
    assert "min_box_iou not measurable" in budget_violations(
        compare({"det": ref}, {"det": ref}, specs, None), Budget(min_box_iou=0.9))[0]
    # A decoder that returns the wrong thing is named, with what was expected.
    bad = DetectionSpec(name="boxes", decode={"function": "test_select_registry:decode_boxes",
                                              "args": {"threshold": "x"}})
    with pytest.raises(ValueError, match=r"detections\[0\] 'boxes': test_select_registry:decode_boxes failed"):
        compare({"det": ref}, {"det": ref}, specs, None, detections=[bad])


def test_selection_per_device_class_and_software_gpu_is_provisional():
    """Each device class gets its own decision; a WebGPU decision resting on a software adapter (SwiftShader) is
    provisional, says why and never calls itself fastest; in the index a hardware-GPU class's decision leads."""
    from pipeline.release.candidates import primary
    from pipeline.evaluate.browser import cpu_fallback, device
    from pipeline.hosts import DEFAULT_HOSTS

    swiftshader = {"vendor": "google", "architecture": "swiftshader", "isFallbackAdapter": True}
    real = {"vendor": "nvidia", "architecture": "hopper", "isFallbackAdapter": False}

    def software_gpu(adapter):  # the device record carries the page's verdict (bench.js isSoftwareGpu)
        env = {"probe": {"info": adapter}, "software_gpu": bool(adapter and adapter["isFallbackAdapter"])}
        return device(DEFAULT_HOSTS[0], env, "webgpu")["software_gpu"]

    assert software_gpu(swiftshader) and not software_gpu(real) and software_gpu(None) is None
    assert device(DEFAULT_HOSTS[0], {"probe": {"info": real}, "software_gpu": False}, "wasm")["software_gpu"] is None

    ort_log = ["error: 2026-11-25 [W:onnxruntime:, session_state.cc:1397 VerifyEachNodeIsAssignedToAnEp] Some nodes "
               "were not assigned to the preferred execution providers which may or may not have an negative impact"]
    assert "CPU provider" in cpu_fallback("webgpu", {"console": ort_log})
    assert cpu_fallback("wasm", {"console": ort_log}) is None
    assert cpu_fallback("webgpu", {"console": ["log: fine"]}) is None
    placed = {"providers": {"WebGpuExecutionProvider": 584, "CPUExecutionProvider": 106},
              "no_gpu_kernel": {"DynamicQuantizeLinear": 53, "ConvInteger": 53}}
    assert cpu_fallback("webgpu", {"console": ort_log, "placement": placed}) == (
        "onnxruntime placed 106 of 690 nodes on its CPU provider (no GPU kernel for ConvInteger x53, "
        "DynamicQuantizeLinear x53): data moves between GPU and CPU during inference")
    shapes = {"providers": {"WebGpuExecutionProvider": 50, "CPUExecutionProvider": 2}, "no_gpu_kernel": {}}
    assert "shape computations" in cpu_fallback("webgpu", {"console": ort_log, "placement": shapes})
    assert "placement not read: boom" in cpu_fallback("webgpu", {"console": ort_log, "placement": {"error": "boom"}})
    assert "LiteRT.js" in cpu_fallback("webgpu", {"fullyAccelerated": False})
    assert cpu_fallback("webgpu", {"fullyAccelerated": True}) is None

    def gpu_cand(variant, median, cls, adapter):
        c = cand(variant, target="webgpu", median=median)
        c.device_class = cls
        c.record = {"device": {"class": cls, "gpu_adapter": adapter, "software_gpu": software_gpu(adapter)}}
        return c

    cands = [gpu_cand("int8_dynamic", 5, "build-machine", swiftshader), gpu_cand("fp32", 9, "build-machine", swiftshader),
             gpu_cand("int8_dynamic", 4, "gpu-laptop", real), gpu_cand("fp32", 1, "gpu-laptop", real)]
    soft = select("webgpu", cands, device_class="build-machine")
    hard = select("webgpu", cands, device_class="gpu-laptop")
    assert soft.chosen.variant == "int8_dynamic" and soft.provisional and "fastest" not in soft.reason
    assert "software webgpu adapter (google swiftshader, isFallbackAdapter)" in soft.reason
    assert hard.chosen.variant == "fp32" and not hard.provisional and hard.reason.startswith("fastest")
    assert primary([soft, hard]) is hard and primary([soft]) is soft
    # wasm is never provisional, whatever the adapter
    w = cand("fp32")
    w.record = {"device": {"software_gpu": True}}
    assert not select("wasm", [w]).provisional


def test_samples_of_different_sizes_are_fed_at_their_own_size():
    """A loader's samples of different widths: stored padded with their real shapes, fed cropped in batches of
    equal sizes, outputs of different sizes stacked padded with theirs; accuracy never judges the padding."""
    from pipeline.evaluate.batching import batches, run_samples
    from pipeline.recipe import InputSpec

    class R:  # the part of a recipe pad_ragged reads
        inputs = [InputSpec(name="x", shape=["batch", 2, "width"])]

    from pipeline.evaluate.samples import pad_ragged
    from pipeline.outcome import DataError

    widths = [3, 3, 5, 3, 5]
    data = pad_ragged(R, {"x": [np.full((2, w), float(i + 1), np.float32) for i, w in enumerate(widths)]})
    assert data["x"].shape == (5, 2, 5) and data["extent:x"].tolist() == [[2, w] for w in widths]
    assert [f["x"].shape for f in batches(data, 4)] == [(2, 2, 3), (1, 2, 5), (1, 2, 3), (1, 2, 5)]
    seen = []

    def model(feed):  # a CTC-like head: one step per column, 3 classes; the real width must reach the model
        seen.append(feed["x"].shape[-1])
        x = feed["x"]
        return {"probs": np.stack([x[:, 0], -x[:, 0], np.zeros_like(x[:, 0])], -1)}

    out = run_samples(model, data, 4)
    assert seen == [3, 5, 3, 5] and out["probs"].shape == (5, 5, 3)
    assert out["extent:probs"].tolist() == [[w, 3] for w in widths]
    assert not out["probs"][0, 3:].any()  # padding
    got = {k: v.copy() for k, v in out.items()}
    got["probs"][0, 4] = [0, 9, 0]  # a change in the padding: not judged
    acc = compare(got, out, [OutputSpec(name="probs", kind="ctc", blank=2)], None)
    o = acc["outputs"]["probs"]
    assert o["max_abs_error"] == 0 and o["top1_agreement"] == 1 and o["sequence_match"] == 1 and o["positions"] == 5
    got["probs"][2, 4] = [0, 9, 0]  # a real step of a 5-wide sample
    o = compare(got, out, [OutputSpec(name="probs", kind="ctc", blank=2)], None)["outputs"]["probs"]
    assert o["top1_agreement"] == pytest.approx(18 / 19) and o["sequence_match"] == pytest.approx(4 / 5)
    short = {"probs": got["probs"], "extent:probs": np.array([[w - 1, 3] for w in widths])}
    with pytest.raises(ValueError, match=r"sample 0 has shape \[2, 3\], native has \[3, 3\]"):
        compare(short, out, [OutputSpec(name="probs")], None)
    with pytest.raises(DataError, match=r"sample 1 has shape \[3, 4\], recipe says \[2, 'width'\]"):
        pad_ragged(R, {"x": [np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float32)]})


def test_a_static_shape_model_pads_a_narrower_input_and_is_judged_on_the_text_it_reads():
    """compile_pad "zero": a sample narrower than compile_shape is zero-padded up to it (natively here, in the
    browser by adapter.js runStatic); a ctc output then reads on over the padding, longer than native's. The
    evaluation compares the positions native has and decodes the whole output, as the app does: characters read
    in the padding count as errors. Without compile_pad, another shape is refused, saying why."""
    from pipeline.evaluate.batching import pad_to
    from pipeline.recipe import InputSpec

    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    padded = pad_to(x, [1, 2, 5], "zero", "input x")
    assert padded.shape == (1, 2, 5) and (padded[..., :3] == x).all() and not padded[..., 3:].any()
    assert pad_to(x, [1, 2, 3], None, "input x") is x  # the compiled shape: as is
    with pytest.raises(ValueError, match=r"input x has shape \[1, 2, 3\], the model was compiled for \[1, 2, 5\]"):
        pad_to(x, [1, 2, 5], None, "input x")
    with pytest.raises(ValueError, match="compiled for"):
        pad_to(x, [1, 2, 2], "zero", "input x")  # wider than compiled: never cropped
    with pytest.raises(ValueError, match="compile_pad needs compile_shape"):
        InputSpec(name="x", shape=["batch", 3, 48, "width"], compile_pad="zero")

    def scores(steps, length, classes=5):
        s = np.full((length, classes), -5.0)
        s[:, 0] = 5.0  # blank
        for t, c in steps:
            s[t] = -5.0
            s[t, c] = 5.0
        return s

    ref = np.stack([scores([(0, 1), (2, 3)], 6), scores([(1, 2)], 6)])
    ref_ext = {"extent:y": np.array([[4, 5], [6, 5]])}  # native: 4 and 6 steps (widths differ)
    got = np.stack([scores([(0, 1), (2, 3)], 8), scores([(1, 2)], 8)])  # static: 8 steps each, blank padding
    spec = [OutputSpec(name="y", kind="ctc")]
    o = compare({"y": got}, {"y": ref, **ref_ext}, spec, None)["outputs"]["y"]
    assert o["sequence_match"] == 1 and o["char_error_rate"] == 0 and o["top1_agreement"] == 1
    got[0, 6] = scores([(0, 4)], 1)[0]  # a character read in the padding: the app would show it
    o = compare({"y": got}, {"y": ref, **ref_ext}, spec, None)["outputs"]["y"]
    assert o["sequence_match"] == 0.5 and o["char_error_rate"] == pytest.approx(1 / 3) and o["top1_agreement"] == 1
    with pytest.raises(ValueError, match=r"sample 1 has shape \[5, 5\], native has \[6, 5\]"):
        compare({"y": got[:, :5]}, {"y": ref, **ref_ext}, spec, None)  # shorter than native: not a padded read


def test_thread_counts_compete_and_one_thread_stays_for_pages_without_isolation():
    """Each thread count is its own candidate, paired with native at that count; the index's options and features
    follow the candidate's count, so a loader on a page without cross-origin isolation walks to a 1-thread one."""
    from pipeline.release.candidates import candidate_entry, required_features

    def threaded(variant, median, threads):
        c = cand(variant, median=median)
        c.threads = threads
        c.record = {"native": {"status": "ok", "latency_ms": {"median": median / 3, "p90": 1, "iqr": 0},
                               "threads": threads},
                    "files": [], "latency": {"median": median, "p90": median, "iqr": 0}, "cold_start_ms": 1,
                    "session_ms": 1, "first_inference_ms": 1, "download_bytes": 100, "accuracy": {},
                    "ship_mode": {"mode": "main"}, "env": {"threads": threads}}
        return c

    cands = [threaded("fp32", 4.0, 1), threaded("fp32", 2.5, 2), threaded("simplified", 3.0, 1)]
    d = select("wasm", cands)
    assert (d.chosen.variant, d.chosen.threads) == ("fp32", 2) and "(2 threads)" in d.chosen.label
    assert [(c.variant, c.threads) for c in d.ranking] == [("fp32", 2), ("simplified", 1), ("fp32", 1)]
    top, single = candidate_entry(d.ranking[0]), candidate_entry(d.ranking[1])
    assert top["runtime_options"] == {"threads": 2, "cross_origin_isolated": True}
    assert "wasm-threads" in top["required_features"] and "wasm-threads" not in required_features(d.ranking[1])
    assert single["runtime_options"] == {"threads": 1, "cross_origin_isolated": False}
    assert top["metrics"]["native_latency_ms"]["median"] == pytest.approx(2.5 / 3)  # native at the same count


def test_layers_kept_float_are_reported_from_one_record_shape(tmp_path):
    """A mixed-precision variant's record (ORT int8_qdq_mixed's metadata, LiteRT litert_int8_mixed's manifest: the
    same float_nodes shape) becomes one report line per candidate, skipped ones included, and in the HTML table;
    variants without a record have none."""
    from types import SimpleNamespace

    from pipeline.families import kept_float, variant
    from pipeline.families.litert import convert as litert
    from pipeline.families.ort import convert as ort
    from pipeline.release.candidates import candidate
    from pipeline.release.report import candidate_rows, write_html_report

    assert variant("int8_qdq_mixed").quantization_record is ort.quantization_record
    assert variant("litert_int8_mixed").quantization_record is litert.quantization_record
    assert variant("int8_qdq").quantization_record is None and variant("litert_int8").quantization_record is None
    rec = {"float_nodes": [{"node": "/features.0/Conv", "op": "Conv",
                            "why": "kept float: output error on 32 calibration samples 0.2 -> 0.1 (50.0 % lower)"},
                           {"node": "/classifier/Gemm", "op": "Gemm", "why": "kept float: 0.1 -> 0.09"}]}
    line = kept_float(rec)
    assert line == ("kept float: /features.0/Conv (Conv: output error on 32 calibration samples 0.2 -> 0.1 "
                    "(50.0 % lower)); /classifier/Gemm (Gemm: 0.1 -> 0.09)")
    assert kept_float({"float_nodes": []}) == "kept float: none (all layers int8)" and kept_float(None) is None
    recipe = SimpleNamespace(budget=Budget(min_top1_agreement=0.95))
    def skipped():
        return {"status": "skipped", "stage": "native", "error": "top-1 agreement 0.89 < 0.95 natively"}

    rows = candidate_rows([candidate(recipe, "int8_qdq_mixed", "ort", "wasm", skipped(), [], {"status": "ok"},
                                     quantization=rec),
                           candidate(recipe, "int8_qdq", "ort", "wasm", skipped(), [], {"status": "ok"})])
    assert [r["kept_float"] for r in rows] == [line, None]
    report = {"report": {"model": "m", "version": "1", "candidates": rows,
                         "decisions": [{"target": "wasm", "status": "unmet", "reason": "none inside the budget",
                                        "chosen": None}]}}
    page = write_html_report(tmp_path, [report]).read_text()
    assert "layers kept float (why)" in page and "/features.0/Conv (Conv: output error" in page


def test_screening_keeps_each_runtimes_best_and_the_near_best():
    from pipeline.release.screen import shortlist

    def rc(variant, runtime, median, **kw):
        c = cand(variant, median=median, **kw)
        c.runtime = runtime
        return c

    cands = [rc("litert_fp32", "litert", 10), rc("litert_fp16", "litert", 12), rc("litert_int8", "litert", 30),
             rc("simplified", "ort", 20), rc("fp32", "ort", 21), rc("tfjs_fp32", "tfjs", 40),
             rc("int8", "ort", 5, reasons=["top-1 agreement 0.5 < 0.95"]), rc("broken", "ort", 1, status="failed")]
    v = shortlist(cands, ["latency"], 0.25)
    # within 25 % of 10 ms, plus the best of ort and tfjs; never what is outside the budget or failed
    assert v["contenders"] == ["litert_fp32", "litert_fp16", "simplified", "tfjs_fp32"]
    assert v["why"]["tfjs_fp32"] == "tfjs's best" and "within 25%" in v["why"]["litert_fp16"]
    assert set(v["screened_out"]) == {"litert_int8", "fp32"}
    assert "3.00x the best (litert/litert_fp32 10 ms)" in v["screened_out"]["litert_int8"]
    # a second objective screening measures brings its own near-best (the smallest download here)
    cands[2].values["size"] = 10
    assert "litert_int8" in shortlist(cands, ["latency", "size"], 0.25)["contenders"]
    # off, or ranked by what only the full measurement has: everything inside the budget goes on
    assert len(shortlist(cands, ["latency"], None)["contenders"]) == 6
    assert len(shortlist(cands, ["responsiveness"], 0.25)["contenders"]) == 6
    assert shortlist([cands[-1]], ["latency"], 0.25) == {"contenders": [], "why": {}, "screened_out": {}}
