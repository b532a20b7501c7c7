"""Recipe schema: bad recipes fail before any work, naming the file and the field."""
from pathlib import Path

import pytest
import yaml

from pipeline.outcome import SourceError
from pipeline.recipe import RecipeError, load_recipe, load_recipes

ROOT = Path(__file__).resolve().parents[2]

GOOD = {
    "name": "tiny", "version": "1",
    "source": {"kind": "pytorch", "module": {"function": "models:build"},
               "weights": {"trainer": {"function": "models:train"}}},
    "inputs": [{"name": "input", "shape": ["batch", 3, 8, 8]}],
    "outputs": [{"name": "logits", "kind": "logits"}],
    "data": {"eval": {"function": "models:samples"}},
    "budget": {"min_top1_agreement": 0.9},
    "targets": ["wasm", "webgpu"],
}


def write(tmp_path, data, name="r.yaml"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def with_(path, value):
    import copy

    d = copy.deepcopy(GOOD)
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    if value is KeyError:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return d


def test_demo_recipes_validate():
    names = {r.name for r in load_recipes(ROOT / "recipes")}
    assert names == {"mobilenet_v2", "efficientnet_lite0", "face_onet", "fashion_cnn", "fashion_keras", "text_direction",
                     "minilm_embedding", "text_recognition"}


def test_good_recipe_defaults(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    assert r.inputs[0].dynamic_axes == {0: "batch"}
    assert r.measure["webgpu"].runs < r.measure["wasm"].runs  # software WebGPU: few runs by default
    assert set(r.measure) == {"wasm", "webgpu", "webgl"}  # one default per row of pipeline.targets
    assert r.selection.objectives == ["latency"] and r.selection.goals.input_delay_ms is None
    assert r.path == (tmp_path / "r.yaml").resolve()
    # wasm at 1 thread and at the host's core count by default; every count competes
    assert r.measure["wasm"].threads == [1, "cores"] and r.measure["webgpu"].threads == [1]
    assert r.selection.threads == "all"
    assert load_recipe(write(tmp_path, with_(("measure",), {"wasm": {"threads": 4}}))).measure["wasm"].threads == [4]


@pytest.mark.parametrize("path,value,field,words", [
    (("budget",), {}, "budget", "at least one"),
    (("budget", "min_top1_agreement"), 1.5, "budget.min_top1_agreement", "less than or equal to 1"),
    (("targets",), ["wasm", "vulkan"], "targets", "unknown target"),
    (("variants",), ["fp32", "int3"], "variants", "unknown variant"),
    (("source", "kind"), "caffe", "source", "caffe"),
    (("source", "module", "function"), "no_colon", "source.pytorch.module.function", "package.module:function"),
    (("source", "weights"), {"file": "a.pt", "trainer": {"function": "models:train"}}, "source.pytorch.weights",
     "exactly one"),
    (("inputs", 0, "shape"), [0, 3], "inputs.0.shape", "positive"),
    (("inputs", 0, "dtype"), "float64", "inputs.0.dtype", "float32"),
    (("name",), "Bad Name", "name", "pattern"),
    (("data",), KeyError, "data", "Field required"),
    (("budget", "max_abs_eror"), 0.1, "budget.max_abs_eror", "Extra inputs"),
    (("selection",), {"objectives": ["latency", "speed"]}, "selection.objectives", "unknown objective"),
    (("selection",), {"goals": {"latency": 5}}, "selection.goals.latency", "Extra inputs"),
    # Typos and empty lists are refused before any work, not silently ignored.
    (("measure",), {"wsam": {"runs": 3}}, "measure", "unknown target(s) ['wsam']"),
    (("variants",), [], "variants", "at least 1 item"),
    (("source", "module", "function"), "models:no_such_function", "source.pytorch.module",
     "has no callable 'no_such_function'"),
    (("source", "module", "function"), "no_such_module_xyz:build", "source.pytorch.module",
     "cannot import module 'no_such_module_xyz'"),
    (("source", "module"), {"function": "models:build", "args": {"depth": 3}}, "source.pytorch.module",
     "does not take the arguments ['depth']"),
    (("source", "weights", "trainer"), {"function": "models:samples"}, "source.pytorch.weights",
     "cannot be called as models:samples(out_path=...)"),
    (("data", "eval"), {"function": "models:samples", "args": {"n": 4, "colour": True}}, "data.eval",
     "does not take the arguments"),
    (("inputs", 0, "compile_shape"), [1, 3, 8], "inputs.0", "must give a positive size for each of the 4"),
    (("inputs", 0, "compile_shape"), [1, 3, 9, 8], "inputs.0", "contradicts the fixed dimensions"),
    (("budget", "outputs"), {"scores": {"max_abs_error": 1}}, "<top>", "budget.outputs names ['scores']"),
    (("budget", "min_retrieval_agreement"), 1.2, "budget.min_retrieval_agreement", "less than or equal to 1"),
    # A loader that prepares data with the recipe's assets (a tokenizer) needs the recipe to name them.
    (("data", "eval"), {"function": "model_sources.datasets:tokenized_sentences"}, "<top>",
     "takes `assets`, but the recipe has no `assets`"),
    (("assets",), {"my tokenizer": {"file": "t.json"}}, "assets", "use letters, digits"),
    (("source", "unused_weights"), "pooler.*", "source.pytorch.unused_weights", "valid list"),
    (("data", "feedback"), {"logits": "input"}, "data", "feedback needs sequence_length"),
    (("data",), {"eval": {"function": "models:samples"}, "sequence_length": 2, "feedback": {"state": "input"}},
     "<top>", "'state' is not an output"),
    (("detections",), [{"name": "logits", "decode": {"function": "model_sources.mtcnn_onet:decode_faces"}}],
     "<top>", "repeat an output's"),
    (("detections",), [{"name": "d", "decode": {"function": "models:samples"}}], "detections.0.decode",
     "cannot be called as models:samples(outputs=...)"),
    (("detections",), [{"name": "d", "decode": {"function": "model_sources.mtcnn_onet:decode_faces"}, "iou": 0}],
     "detections.0.iou", "greater than 0"),
    (("measure",), {"wasm": {"threads": [1, 1]}}, "measure.wasm.threads", "thread counts repeat"),
    (("measure",), {"wasm": {"threads": [1, "all"]}}, "measure.wasm.threads", "1..16 or 'cores'"),
    (("selection",), {"threads": "many"}, "selection.threads", "'all' or 'single'"),
])
def test_bad_field_named(tmp_path, path, value, field, words):
    p = write(tmp_path, with_(path, value))
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg and f": {field}" in msg and words in msg, msg


def test_malformed_yaml_names_line(tmp_path):
    p = write(tmp_path, "name: tiny\nsource: [unclosed\n")
    with pytest.raises(RecipeError, match=rf"{p}: malformed YAML at line \d+"):
        load_recipe(p)


def test_not_a_mapping(tmp_path):
    with pytest.raises(RecipeError, match="expected a mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def test_folder_reports_every_bad_recipe_and_duplicates(tmp_path):
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD, "b.yaml")  # same name/version
    write(tmp_path, with_(("targets",), []), "c.yaml")
    with pytest.raises(RecipeError) as e:
        load_recipes(tmp_path)
    msg = str(e.value)
    assert "b.yaml: name/version tiny 1 already used" in msg and "c.yaml: targets" in msg


def test_missing_files_are_clear(tmp_path):
    d = with_(("source", "weights"), {"file": "nowhere.pt"})
    r = load_recipe(write(tmp_path, d))
    with pytest.raises(SourceError, match="file not found: .*nowhere.pt"):
        r.resolve_file(r.source.weights)
    d = with_(("source", "weights"), {"package_file": {"package": "no_such_pkg_xyz", "path": "w.pt"}})
    r = load_recipe(write(tmp_path, d))
    with pytest.raises(SourceError, match="no_such_pkg_xyz.*not installed"):
        r.resolve_file(r.source.weights)


def test_inputs_with_their_batch_elsewhere_scalars_and_constants(tmp_path):
    from models import cell_recipe

    r = load_recipe(write(tmp_path, cell_recipe()))
    x, state, gain = r.inputs
    assert (x.batch_axis, state.batch_axis, gain.batch_axis) == (0, 1, None)
    assert state.sample_shape() == [2, 3] and gain.sample_shape() == [] and gain.value == 2.0
    assert x.batchable and not state.batchable and r.outputs[1].batch_axis == 1
    with pytest.raises(RecipeError, match=r"data.eval_batch must be 1 for this model: input state \(batch on axis 1\), "
                                          r"input gain \(no batch axis\), output state_out"):
        load_recipe(write(tmp_path, cell_recipe(data={"eval": {"function": "models:cell_samples"}, "eval_batch": 4})))
    bad = cell_recipe()
    bad["inputs"][2] = {"name": "gain", "shape": [2], "value": [1.0, 2.0, 3.0]}
    with pytest.raises(RecipeError, match="value does not fit shape"):
        load_recipe(write(tmp_path, bad))
    bad = cell_recipe()
    bad["inputs"][1] = {"name": "state", "shape": [2, "batch", 3], "batch_axis": 3}
    with pytest.raises(RecipeError, match="batch_axis 3 is not an axis"):
        load_recipe(write(tmp_path, bad))


def test_code_a_recipe_names_is_part_of_the_keys(tmp_path, monkeypatch):
    """Editing the module a recipe's model factory (or data loader) lives in rebuilds what it made: keys follow
    the code, not only the function's name."""
    import luigi

    from pipeline.tasks import EvalData, SourceModel

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "user_models.py").write_text("from models import build, samples, train\n")
    recipe = with_(("source", "module", "function"), "user_models:build")
    recipe["data"] = {"eval": {"function": "user_models:samples"}}
    path = write(tmp_path, recipe)

    def keys():
        luigi.task_register.Register.clear_instance_cache()
        return (SourceModel(recipe_path=str(path), artifacts_dir=str(tmp_path / "art")).key,
                EvalData(recipe_path=str(path), artifacts_dir=str(tmp_path / "art")).key)

    before = keys()
    assert keys() == before
    (tmp_path / "user_models.py").write_text("from models import build, samples, train  # edited\n")
    after = keys()
    assert after[0] != before[0] and after[1] != before[1]


def test_a_task_records_the_time_it_waited_for_the_machine_apart_from_its_work(tmp_path):
    """While another worker's timing holds the machine, an untimed task waits: its result says how long
    (lock_wait_s), so build_time.py counts work, not waits."""
    import json
    import threading

    import luigi

    from pipeline.fsutil import machine_lock
    from pipeline.tasks import EvalData

    path = write(tmp_path, with_(("data", "eval", "function"), "models:samples"))
    task = EvalData(recipe_path=str(path), artifacts_dir=str(tmp_path / "art"))
    held, release = threading.Event(), threading.Event()

    def timing_elsewhere():
        with machine_lock("timing"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=timing_elsewhere)
    t.start()
    held.wait(10)
    threading.Timer(1.0, release.set).start()
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    t.join(10)
    res = json.loads(Path(task.output().path).read_text())
    assert res["status"] == "ok" and res["lock_wait_s"] >= 0.8 and res["seconds"] >= res["lock_wait_s"], res
