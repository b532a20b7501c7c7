"""`pipeline-release`: the release half, after `luigi --module pipeline BuildAll` has built and measured.

    pipeline-release list                               versions, aliases, winners, headline numbers
    pipeline-release diff MODEL A B [--json]            what changes per target between two versions
    pipeline-release promote MODEL VERSION --alias NAME [--force --reason TEXT]
    pipeline-release rollback MODEL --alias NAME [--reason TEXT]
    pipeline-release verify                             re-hash every file the index references
    pipeline-release publish --to DIR|s3://bucket/prefix
    pipeline-release serve [--port N] [--no-isolation]  the registry + the example app, for a browser

`--registry` (default artifacts/registry) may be a folder or s3://bucket/prefix (`--endpoint-url` or
PIPELINE_S3_ENDPOINT_URL for MinIO, R2, GCS interoperability, a local S3-API server). Promoting or publishing a
version freezes it: a later build that would change it is refused. Writes to a remote registry assume one writer
at a time.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pipeline.outcome import PipelineError, RegistryError
from pipeline.release import gate as gates
from pipeline.release.registry import (INDEX, freeze, model_entry, now, parse_index, read_index,
                                       referenced_files, update_index, validate_index)


class Registry:
    """A registry location: a local folder (index writes under its lock) or an object store (S3 API)."""

    def __init__(self, location: str, endpoint_url: str | None = None):
        from pipeline.release.store import LocalStore, open_store

        self.location = location
        self.store = open_store(location, endpoint_url)
        self.local = Path(location) if isinstance(self.store, LocalStore) else None

    def read(self) -> dict:
        if self.local is not None:
            return read_index(self.local)
        data = self.store.read_bytes(INDEX)
        if data is None:
            raise RegistryError(f"{self.store.url}: no {INDEX} there (nothing published yet?)")
        return parse_index(data, f"{self.store.url}/{INDEX}")

    def update(self, change):
        if self.local is not None:
            return update_index(self.local, change)
        index = self.read()
        out = change(index)
        index["updated"] = now()
        validate_index(index)
        self.store.put_bytes(INDEX, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
        return out


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(1)


def _versions(index: dict, model: str) -> dict:
    if model not in index["models"]:
        _fail(f"no model {model!r} in the registry (models: {', '.join(sorted(index['models'])) or 'none'})")
    return index["models"][model]["versions"]


def _version(index: dict, model: str, version: str) -> dict:
    versions = _versions(index, model)
    if version not in versions:
        _fail(f"{model} has no version {version!r} (versions: {', '.join(sorted(versions))})")
    return versions[version]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--registry", default="artifacts/registry", show_default=True, metavar="DIR|URL",
              help="registry folder, or s3://bucket/prefix")
@click.option("--endpoint-url", default=None, envvar="PIPELINE_S3_ENDPOINT_URL",
              help="S3-API endpoint (MinIO, R2, GCS interoperability, a local server)")
@click.pass_context
def main(ctx, registry: str, endpoint_url: str | None):
    """Release models the pipeline built: compare versions, gate and move aliases, publish, verify."""
    ctx.obj = {"registry": registry, "endpoint_url": endpoint_url}


def _registry(ctx) -> Registry:
    return Registry(ctx.obj["registry"], ctx.obj["endpoint_url"])


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="print the index entries as JSON")
@click.pass_context
def list_(ctx, as_json: bool):
    """Models, versions, aliases, and per target the chosen runtime/variant with its headline numbers."""
    index = _registry(ctx).read()
    if as_json:
        click.echo(json.dumps(index, indent=2, sort_keys=True))
        return
    if not index["models"]:
        click.echo(f"{ctx.obj['registry']}: no models yet (run `luigi --module pipeline BuildAll`)")
    for model, m in sorted(index["models"].items()):
        aliases = {}
        for name, a in m["aliases"].items():
            aliases.setdefault(a["version"], []).append(name)
        click.echo(model)
        for version, v in sorted(m["versions"].items(), key=lambda kv: kv[1].get("created", "")):
            state = "frozen" if v.get("frozen") else "draft"
            tag = f"  [{', '.join(sorted(aliases[version]))}]" if version in aliases else ""
            click.echo(f"  {version:<12} {state:<6}{tag}")
            for t, tv in sorted(v["targets"].items()):
                if tv["status"] != "chosen":
                    click.echo(f"      {t:<7} unmet: {tv['reason'][:90]}")
                    continue
                f = {x.name: gates.figure(tv, x) for x in gates.FIGURES}
                acc = (f"agreement {f['top1_agreement']:.3f}" if f["top1_agreement"] is not None else
                       f"max |err| {gates.fmt(f['max_abs_error'])}")
                click.echo(f"      {t:<7} {gates.winner(tv):<24} {gates.fmt(f['latency'], 'ms'):>10} median  "
                           f"{gates.fmt(f['cold_start'], 'ms'):>10} cold  {gates.fmt(f['size'], 'bytes'):>14}  {acc}")


@main.command()
@click.argument("model")
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def diff(ctx, model: str, a: str, b: str, as_json: bool):
    """Per target: winner, accuracy figures, latency, cold start, download size, memory, status changes."""
    index = _registry(ctx).read()
    rows = gates.diff(_version(index, model, a), _version(index, model, b))
    if as_json:
        click.echo(json.dumps({"model": model, "a": a, "b": b, "rows": rows}, indent=2))
        return
    click.echo(f"{model}: {a} → {b}")
    click.echo(f"  {'target':<7} {'':<18} {a:>16} {b:>16}  change")
    for r in rows:
        if r["figure"] == "winner":
            click.echo(f"  {r['target']:<7} {'winner':<18} {r['a']:>16} {r['b']:>16}  {r['change']}")
            continue
        if r["a"] is None and r["b"] is None:
            continue
        ch = r["change"]
        mark = "" if ch is None or ch == 0 else (" (better)" if (ch < 0) == (r["better"] == "lower") else " (worse)")
        change = "–" if ch is None else (f"×{1 + ch:.3g}{mark}" if abs(ch) >= 10 else f"{ch:+.1%}{mark}")
        click.echo(f"  {'':<7} {r['label']:<18} {gates.fmt(r['a'], r['unit']):>16} {gates.fmt(r['b'], r['unit']):>16}"
                   f"  {change}")


@main.command()
@click.argument("model")
@click.argument("version")
@click.option("--alias", required=True, help="e.g. stable, champion")
@click.option("--force", is_flag=True, help="move the alias even if the release gate fails (needs --reason)")
@click.option("--reason", default=None, help="why: recorded in the alias history")
@click.pass_context
def promote(ctx, model: str, version: str, alias: str, force: bool, reason: str | None):
    """Point ALIAS at VERSION after the release gate passes against the alias's current holder."""
    if force and not reason:
        _fail("--force needs --reason \"…\": it is recorded in the alias history")
    reg = _registry(ctx)
    index = reg.read()
    new = _version(index, model, version)
    current = index["models"][model]["aliases"].get(alias)
    holder_version = current["version"] if current else None
    if holder_version == version:
        click.echo(f"{model}: {alias} already points at {version}")
        return
    holder = index["models"][model]["versions"].get(holder_version) if holder_version else None
    passed, failed = gates.gate(new, holder, version, holder_version)
    click.echo(f"release gate: {model} {version} vs {alias} = {holder_version or '(none)'}")
    for p in passed:
        click.echo(f"  pass  {p}")
    for f in failed:
        click.echo(f"  FAIL  {f}")
    if failed and not force:
        _fail(f"{model} {version} not promoted to {alias}: {len(failed)} check(s) failed "
              "(fix it and bump the version, or --force --reason \"…\")")

    def move(index: dict) -> None:
        m = model_entry(index, model)
        a = m["aliases"].setdefault(alias, {"version": version, "history": []})
        a["history"].append({"version": version, "previous": holder_version, "at": now(), "action": "promote",
                             "forced": bool(failed), "reason": reason, "gate": [f"FAIL {f}" for f in failed] or
                             [f"pass {p}" for p in passed]})
        a["version"] = version
        freeze(index, model, version, f"promoted to {alias}")

    reg.update(move)
    click.echo(f"{model}: {alias} → {version}" + (f" (forced: {reason})" if failed else "") +
               f"; {version} is frozen")


@main.command()
@click.argument("model")
@click.option("--alias", required=True)
@click.option("--reason", default=None)
@click.pass_context
def rollback(ctx, model: str, alias: str, reason: str | None):
    """Move ALIAS back to the version it pointed at before its last move."""
    reg = _registry(ctx)
    index = reg.read()
    _versions(index, model)
    a = index["models"][model]["aliases"].get(alias)
    if not a:
        _fail(f"{model} has no alias {alias!r}")
    previous = a["history"][-1].get("previous") if a["history"] else None
    if not previous:
        _fail(f"{model} {alias} has no previous version to roll back to (history: "
              f"{', '.join(h['version'] for h in a['history'])})")
    current = a["version"]

    def move(index: dict) -> None:
        al = index["models"][model]["aliases"][alias]
        al["history"].append({"version": previous, "previous": current, "at": now(), "action": "rollback",
                              "forced": False, "reason": reason, "gate": []})
        al["version"] = previous

    reg.update(move)
    click.echo(f"{model}: {alias} → {previous} (was {current})")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verify(ctx, as_json: bool):
    """Re-hash every file the index references; non-zero exit naming each missing, resized or altered file."""
    from pipeline.release.store import verify as verify_files

    reg = _registry(ctx)
    index = reg.read()
    files = referenced_files(index)
    problems = verify_files(reg.store, files)
    if as_json:
        click.echo(json.dumps({"registry": reg.store.url, "files": len(files), "problems": problems}, indent=2))
    else:
        for p in problems:
            click.echo(f"  {p}")
        click.echo(f"{reg.store.url}: {len(files)} files, " +
                   (f"{len(problems)} problem(s)" if problems else "all match the index"))
    if problems:
        sys.exit(1)


@main.command()
@click.option("--to", "dest", required=True, metavar="DIR|s3://bucket/prefix")
@click.pass_context
def publish(ctx, dest: str):
    """Copy the registry to DEST: content-addressed files first (skipping those already there), index.json last,
    so a reader never sees an index that points at a missing file. Every published version is frozen."""
    from pipeline.release.store import open_store, sync

    reg = _registry(ctx)
    if reg.local is None:
        _fail("publish copies a local registry (the build's): give --registry DIR")
    index = reg.read()
    target = open_store(dest, ctx.obj["endpoint_url"])
    existing = target.read_bytes(INDEX)
    merged = parse_index(existing, f"{target.url}/{INDEX}") if existing else {"schema_version": 2, "models": {}}
    for model, m in index["models"].items():
        there = merged["models"].setdefault(model, {"versions": {}, "aliases": {}})
        for version, v in m["versions"].items():
            old = there["versions"].get(version)
            if old and old.get("frozen") and old["build_key"] != v["build_key"]:
                _fail(f"{target.url}: {model} {version} is published there with other content (build key "
                      f"{old['build_key']}, here {v['build_key']}): versions never change; bump the version")
            there["versions"][version] = json.loads(json.dumps(v))
            freeze(merged, model, version, f"published to {target.url}")
        there["aliases"].update(json.loads(json.dumps(m["aliases"])))
    merged["updated"] = now()
    validate_index(merged)
    blob = (json.dumps(merged, indent=2, sort_keys=True) + "\n").encode()

    def progress(path: str, uploaded: bool) -> None:
        if uploaded:
            click.echo(f"  uploaded {path}")

    result = sync(referenced_files(merged), reg.local, target, INDEX, blob, on_progress=progress)

    def mark(local: dict) -> None:  # what is public never changes: freeze it here too
        for model, m in index["models"].items():
            for version in m["versions"]:
                freeze(local, model, version, f"published to {target.url}")

    reg.update(mark)
    click.echo(f"published to {target.url}: {result['uploaded']} file(s) uploaded "
               f"({result['bytes_uploaded']:,} bytes), {result['skipped']} already there; index.json written last")


WEB_DIR = Path(__file__).resolve().parents[1] / "web"


def serve_registry(registry: Path, port: int = 0, host: str = "127.0.0.1", isolated: bool = True):
    """A local server for a registry folder and the web side: /registry/ (the registry), /web/ (the loader and
    the example app), /browser_validate/runtimes/ (the adapter interface the loader imports). Cross-origin
    isolated (COOP/COEP) unless `isolated` is False, as wasm threads need."""
    from browser_validate.runtimes import RUNTIMES_DIR
    from browser_validate.server import StaticServer

    server = StaticServer(host, port, isolated=isolated)
    server.mount("/registry/", registry)
    server.mount("/web/", WEB_DIR)
    server.mount("/browser_validate/runtimes/", RUNTIMES_DIR)
    return server


@main.command()
@click.option("--port", default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--no-isolation", is_flag=True, help="serve without COOP/COEP (no wasm threads), as many sites do")
@click.pass_context
def serve(ctx, port: int, host: str, no_isolation: bool):
    """Serve a local registry and the example app (web/example/) so a person can open it in a browser."""
    import time

    reg = _registry(ctx)
    if reg.local is None:
        _fail("serve needs a local registry folder (--registry DIR)")
    reg.read()
    server = serve_registry(reg.local, port, host, isolated=not no_isolation)
    click.echo(f"registry: {server.origin}/registry/index.json")
    click.echo(f"example:  {server.origin}/web/example/index.html"
               f"{'' if no_isolation else '   (cross-origin isolated: wasm threads available)'}")
    click.echo("Ctrl-C to stop")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.close()


def run() -> None:
    """Entry point: pipeline errors become one clear line and exit status 1, not a traceback."""
    try:
        main(standalone_mode=True)
    except PipelineError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    run()
